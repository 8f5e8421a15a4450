// Package sql owns every DDL statement grouphook runs: the versioned
// migrations of schema grouphook (embedded from migrations/*.sql and
// recorded in grouphook.schema_migrations), and the set-up of the watched
// table: its publication and its replica identity. roles.sql (RolesSQL) is
// the least-privilege role for the daemon, which an administrator runs
// after migrating; it is not a migration.
//
// It never drops or recreates a publication or a slot, and it takes locks
// on the application's table only in migrate, under a short lock_timeout.
package sql
