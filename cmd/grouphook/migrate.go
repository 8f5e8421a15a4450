package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/grouphook/grouphook/sql"
)

func migrate(ctx context.Context, cfg Config, out io.Writer) error {
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to DATABASE_URL: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	res, err := sql.Migrate(ctx, conn, sql.Options{
		Table:               cfg.Table,
		Publication:         cfg.Publication,
		ReplicaIdentityFull: cfg.ReplicaIdentity == "full",
	})
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if len(res.Applied) == 0 {
		fmt.Fprintln(out, "schema grouphook is up to date")
	} else {
		fmt.Fprintln(out, "applied migrations:", strings.Join(res.Applied, ", "))
	}
	switch {
	case res.PublicationCreated:
		fmt.Fprintf(out, "created publication %s for %s\n", cfg.Publication, cfg.Table)
	case res.PublicationAltered:
		fmt.Fprintf(out, "added %s to publication %s\n", cfg.Table, cfg.Publication)
	}
	if res.ReplicaIdentitySet {
		fmt.Fprintf(out, "set REPLICA IDENTITY FULL on %s\n", cfg.Table)
	}
	return nil
}
