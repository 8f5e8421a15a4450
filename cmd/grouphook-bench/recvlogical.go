package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/grouphook/grouphook/sql/pgcluster"
)

// runRecvlogical drains slot with pg_recvlogical up to endLSN, the way the
// daemon reads it (pgoutput, protocol 1, the same publication), writing to
// /dev/null, and returns the wall time.
//
// pg_recvlogical -E stops at the first data message past endLSN, or at a
// keepalive whose server WAL end reached it. When endLSN is the very end of
// the WAL, neither need ever come: a caught-up walsender only sends a
// keepalive when the client's reported position lags, and the WAL may end
// exactly on endLSN, so the run can hang until wal_sender_timeout/2. The
// caller therefore writes a little WAL after endLSN first (markEnd), so the
// walsender's position passes endLSN and its next keepalive ends the run.
func runRecvlogical(ctx context.Context, dbURL, slot string, endLSN pglogrepl.LSN) (time.Duration, error) {
	bin, err := pgcluster.BinDir()
	if err != nil {
		return 0, err
	}
	path := filepath.Join(bin, "pg_recvlogical")
	if _, err := exec.LookPath(path); err != nil {
		path = "pg_recvlogical"
	}
	cmd := exec.CommandContext(ctx, path,
		"-d", dbURL, "--slot", slot, "--start",
		"-o", "proto_version=1", "-o", "publication_names=grouphook",
		"-E", endLSN.String(), "-f", "/dev/null", "--no-loop")
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("pg_recvlogical: %w: %s", err, out)
	}
	return elapsed, nil
}
