package main

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sethvargo/go-envconfig"
)

const validURL = "postgres://grouphook:s3cret-pw@127.0.0.1:5432/app?sslmode=disable"

func TestLoadConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantMsg []string // each must appear in the error
	}{
		{"missing DATABASE_URL", map[string]string{}, []string{"DATABASE_URL is not set"}},
		{"empty DATABASE_URL", map[string]string{"DATABASE_URL": ""}, []string{"DATABASE_URL is not set"}},
		{"bad DATABASE_URL", map[string]string{"DATABASE_URL": "postgres://u:s3cret-pw@h:notaport/db"}, []string{"DATABASE_URL", "not a valid connection string"}},
		{"bad table", map[string]string{"GROUPHOOK_TABLE": "a.b.c"}, []string{"GROUPHOOK_TABLE", "schema.table"}},
		{"empty table", map[string]string{"GROUPHOOK_TABLE": ""}, []string{"GROUPHOOK_TABLE"}},
		{"bad slot", map[string]string{"GROUPHOOK_SLOT": "Group-Hook"}, []string{"GROUPHOOK_SLOT", "lower-case"}},
		{"long slot", map[string]string{"GROUPHOOK_SLOT": strings.Repeat("s", 64)}, []string{"GROUPHOOK_SLOT"}},
		{"empty publication", map[string]string{"GROUPHOOK_PUBLICATION": ""}, []string{"GROUPHOOK_PUBLICATION"}},
		{"empty field", map[string]string{"GROUPHOOK_FIELDS": "id,,name"}, []string{"GROUPHOOK_FIELDS", "empty entry"}},
		{"duplicate field", map[string]string{"GROUPHOOK_FIELDS": "id, name,id"}, []string{"GROUPHOOK_FIELDS", `"id"`, "twice"}},
		{"bad replica identity", map[string]string{"GROUPHOOK_REPLICA_IDENTITY": "default"}, []string{"GROUPHOOK_REPLICA_IDENTITY", "full", "keep"}},
		{"zero delivery timeout", map[string]string{"GROUPHOOK_DELIVERY_TIMEOUT": "0s"}, []string{"GROUPHOOK_DELIVERY_TIMEOUT", "positive"}},
		{"negative shutdown timeout", map[string]string{"GROUPHOOK_SHUTDOWN_TIMEOUT": "-1s"}, []string{"GROUPHOOK_SHUTDOWN_TIMEOUT", "positive"}},
		{"zero endpoint refresh", map[string]string{"GROUPHOOK_ENDPOINT_REFRESH": "0s"}, []string{"GROUPHOOK_ENDPOINT_REFRESH"}},
		{"retry max below min", map[string]string{"GROUPHOOK_RETRY_MIN": "2s", "GROUPHOOK_RETRY_MAX": "1s"}, []string{"GROUPHOOK_RETRY_MAX", "GROUPHOOK_RETRY_MIN"}},
		{"status interval too long", map[string]string{"GROUPHOOK_STATUS_INTERVAL": "31s"}, []string{"GROUPHOOK_STATUS_INTERVAL", "wal_sender_timeout"}},
		{"zero workers", map[string]string{"GROUPHOOK_WORKERS": "0"}, []string{"GROUPHOOK_WORKERS"}},
		{"zero max in flight", map[string]string{"GROUPHOOK_MAX_IN_FLIGHT": "0"}, []string{"GROUPHOOK_MAX_IN_FLIGHT"}},
		{"bad log level", map[string]string{"GROUPHOOK_LOG_LEVEL": "loud"}, []string{"GROUPHOOK_LOG_LEVEL", "debug, info, warn or error"}},
		{"bad log format", map[string]string{"GROUPHOOK_LOG_FORMAT": "xml"}, []string{"GROUPHOOK_LOG_FORMAT", "json or text"}},
		// A value that does not parse must name the variable, not the Go field.
		{"unparsable duration", map[string]string{"GROUPHOOK_DELIVERY_TIMEOUT": "ten seconds"}, []string{"GROUPHOOK_DELIVERY_TIMEOUT"}},
		{"unparsable number", map[string]string{"GROUPHOOK_WORKERS": "many"}, []string{"GROUPHOOK_WORKERS"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := map[string]string{"DATABASE_URL": validURL}
			if strings.Contains(tt.name, "DATABASE_URL") {
				delete(env, "DATABASE_URL")
			}
			for k, v := range tt.env {
				env[k] = v
			}
			_, _, err := LoadConfig(context.Background(), envconfig.MapLookuper(env), nil)
			if err == nil {
				t.Fatalf("LoadConfig(%v) succeeded, want an error", tt.env)
			}
			msg := err.Error()
			for _, w := range tt.wantMsg {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans several lines: %q", msg)
			}
			if strings.Contains(msg, "s3cret-pw") {
				t.Errorf("error reveals the database password: %q", msg)
			}
		})
	}
}

func TestLoadConfigDefaultsAndUnknownVariables(t *testing.T) {
	cfg, unknown, err := LoadConfig(context.Background(), envconfig.MapLookuper(map[string]string{
		"DATABASE_URL":            validURL,
		"GROUPHOOK_FIELDS":        " id , name,description ",
		"GROUPHOOK_TENANT_COLUMN": " client_id ",
	}), []string{
		"DATABASE_URL=" + validURL,
		"GROUPHOOK_FIELDS=id",
		"GROUPHOOK_TABEL=public.groups",
		"GROUPHOOK_COLOUR=blue",
		"HOME=/root",
		"GROUPHOOKX=1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"GROUPHOOK_COLOUR", "GROUPHOOK_TABEL"}; !slices.Equal(unknown, want) {
		t.Errorf("unknown variables %v, want %v", unknown, want)
	}
	if want := []string{"id", "name", "description"}; !slices.Equal(cfg.Fields, want) {
		t.Errorf("Fields %q, want %q", cfg.Fields, want)
	}
	if cfg.TenantColumn != "client_id" {
		t.Errorf("TenantColumn %q", cfg.TenantColumn)
	}
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"Table", cfg.Table, "public.groups"},
		{"Slot", cfg.Slot, "grouphook"},
		{"Publication", cfg.Publication, "grouphook"},
		{"HTTPAddr", cfg.HTTPAddr, ":9187"},
		{"DeliveryTimeout", cfg.DeliveryTimeout, 10 * time.Second},
		{"ShutdownTimeout", cfg.ShutdownTimeout, 10 * time.Second},
		{"StatusInterval", cfg.StatusInterval, 10 * time.Second},
		{"EndpointRefresh", cfg.EndpointRefresh, time.Second},
		{"LogLevel", cfg.LogLevel, "info"},
		{"LogFormat", cfg.LogFormat, "json"},
		{"ReplicaIdentity", cfg.ReplicaIdentity, "full"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	// Every documented variable is known, so none of them warns.
	var environ []string
	for _, v := range []string{"DATABASE_URL", "GROUPHOOK_TABLE", "GROUPHOOK_SLOT", "GROUPHOOK_PUBLICATION",
		"GROUPHOOK_FIELDS", "GROUPHOOK_TENANT_COLUMN", "GROUPHOOK_HTTP_ADDR", "GROUPHOOK_DELIVERY_TIMEOUT",
		"GROUPHOOK_SHUTDOWN_TIMEOUT", "GROUPHOOK_LOG_LEVEL", "GROUPHOOK_LOG_FORMAT"} {
		environ = append(environ, v+"=x")
	}
	if u := unknownVariables(environ); len(u) != 0 {
		t.Errorf("documented variables reported as unknown: %v", u)
	}
}

func TestRunCommandLine(t *testing.T) {
	ctx := context.Background()
	var out, errOut bytes.Buffer
	err := run(ctx, nil, &out, &errOut)
	var u usageError
	if !errors.As(err, &u) || exitCode(err) != 2 || !strings.Contains(errOut.String(), "Usage:") {
		t.Errorf("no command: err %v (exit %d), stderr %q; want a usage error, exit 2 and the usage", err, exitCode(err), errOut.String())
	}
	errOut.Reset()
	err = run(ctx, []string{"frobnicate"}, &out, &errOut)
	if exitCode(err) != 2 || err == nil || !strings.Contains(err.Error(), `"frobnicate"`) {
		t.Errorf("unknown command: err %v (exit %d)", err, exitCode(err))
	}
	out.Reset()
	if err := run(ctx, []string{"version"}, &out, &errOut); err != nil || !strings.HasPrefix(out.String(), "grouphook ") {
		t.Errorf("version: err %v, output %q", err, out.String())
	}
	if exitCode(errors.New("x")) != 1 {
		t.Error("a plain error must exit 1")
	}
}
