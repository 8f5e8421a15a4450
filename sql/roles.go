package sql

import _ "embed"

// RolesSQL is sql/roles.sql: the least-privilege role "grouphook" for
// "grouphook run". An administrator runs it after Migrate (it is not a
// migration); tests run it too.
//
//go:embed roles.sql
var RolesSQL string
