// Command grouphook streams changes of a Postgres table through logical
// replication and delivers them as signed webhooks. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/sethvargo/go-envconfig"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usage = `grouphook streams a Postgres table's changes to client webhooks.

Usage:
  grouphook run       run the daemon (needs DATABASE_URL; see README.md)
  grouphook migrate   create or update schema grouphook, the publication and the replica identity
  grouphook deliveries list [--endpoint ID] [--status pending|dead] [--limit N] [--json]
                      the durable queue's deliveries (needs DATABASE_URL)
  grouphook deliveries show [--json] ID
                      one delivery, its event and its attempts
  grouphook deliveries replay (--endpoint ID [--since TIME] | ID...)
                      put dead deliveries back in the queue, with their original ids
  grouphook endpoints add --url U [--client C] [--events CREATE,UPDATE,DELETE] [--no-data] [--secret S] [--disabled] [--json]
                      register a client endpoint; prints its secret once (needs DATABASE_URL)
  grouphook endpoints list [--client C] [--json]
  grouphook endpoints show [--json] ID
  grouphook endpoints update ID [--url U] [--client C | --no-client] [--events E] [--data | --no-data] [--json]
  grouphook endpoints enable ID | disable ID | remove ID
  grouphook endpoints rotate-secret ID [--secret S] [--overlap D] [--json]
                      new secret; the old one keeps signing for GROUPHOOK_ROTATION_OVERLAP (24h)
  grouphook demo      start a throwaway PostgreSQL, a receiver and the daemon, and show a callback
  grouphook version   print the version
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "grouphook:", err)
		os.Exit(exitCode(err))
	}
}

// usageError marks a wrong command line; it exits with 2 like flag does.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageError{"no command given: use run, migrate, endpoints, deliveries, demo or version"}
	}
	switch args[0] {
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, versionString())
		return nil
	case "help", "--help", "-h":
		fmt.Fprint(stdout, usage)
		return nil
	case "demo":
		return demo(ctx, stdout, stderr)
	case "deliveries":
		cfg, _, err := LoadConfig(ctx, envconfig.OsLookuper(), os.Environ())
		if err != nil {
			return err
		}
		return deliveries(ctx, cfg.DatabaseURL, args[1:], stdout)
	case "endpoints":
		cfg, _, err := LoadConfig(ctx, envconfig.OsLookuper(), os.Environ())
		if err != nil {
			return err
		}
		return endpointsCommand(ctx, cfg, args[1:], stdout)
	case "run", "migrate":
		cfg, unknown, err := LoadConfig(ctx, envconfig.OsLookuper(), os.Environ())
		if err != nil {
			return err
		}
		logger := newLogger(cfg, stderr)
		for _, name := range unknown {
			logger.Warn("ignoring unknown variable " + name + ": check its spelling against README.md")
		}
		if args[0] == "migrate" {
			return migrate(ctx, cfg, stdout)
		}
		return daemon(ctx, cfg, logger, nil)
	}
	fmt.Fprint(stderr, usage)
	return usageError{fmt.Sprintf("unknown command %q: use run, migrate, endpoints, deliveries, demo or version", args[0])}
}

func versionString() string {
	rev := ""
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				rev = " (" + s.Value[:12] + ")"
			}
		}
	}
	return "grouphook " + version + rev
}
