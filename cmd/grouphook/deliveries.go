package main

// grouphook deliveries: look at and replay the durable queue
// (grouphook.deliveries) against DATABASE_URL.

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/grouphook/grouphook/deliver"
)

// deliveries runs "grouphook deliveries <list|show|replay> ...". Bad input
// is one sentence and a non-zero exit, and changes nothing.
func deliveries(ctx context.Context, dbURL string, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"deliveries needs a subcommand: list, show or replay"}
	}
	var run func(context.Context, *pgx.Conn) error
	var err error
	switch args[0] {
	case "list":
		run, err = deliveriesList(args[1:], stdout)
	case "show":
		run, err = deliveriesShow(args[1:], stdout)
	case "replay":
		run, err = deliveriesReplay(args[1:], stdout)
	default:
		return usageError{fmt.Sprintf("unknown deliveries subcommand %q: use list, show or replay", args[0])}
	}
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("connect to DATABASE_URL: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = run(ctx, conn)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000") {
		return fmt.Errorf("table %s does not exist: run grouphook migrate first", deliver.DeliveriesTable)
	}
	return err
}

// parseArgs parses flags anywhere among the positional arguments, which it
// returns.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, usageError{fmt.Sprintf("usage: grouphook %s (see grouphook help)", fs.Name())}
			}
			return nil, usageError{fmt.Sprintf("%s: %v", fs.Name(), err)}
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

func parseEndpoint(cmd, s string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || id <= 0 {
		return 0, usageError{fmt.Sprintf("%s: --endpoint %q is not an endpoint id: give the number in grouphook.endpoints.id", cmd, s)}
	}
	return id, nil
}

func parseDeliveryID(cmd, s string) (int64, error) {
	id, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || id <= 0 {
		return 0, usageError{fmt.Sprintf("%s: %q is not a delivery id: give the number grouphook deliveries list shows", cmd, s)}
	}
	return id, nil
}

// parseSince reads --since: an RFC 3339 time, a date (UTC midnight), or a
// duration meaning that long ago.
func parseSince(cmd, s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	return time.Time{}, usageError{fmt.Sprintf("%s: --since %q is not a time: use RFC 3339 such as 2026-05-01T12:00:00Z, a date such as 2026-05-01, or a duration such as 24h for that long ago", cmd, s)}
}

func deliveriesList(args []string, stdout io.Writer) (func(context.Context, *pgx.Conn) error, error) {
	const cmd = "deliveries list"
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	endpoint := fs.String("endpoint", "", "only deliveries of this endpoint id")
	status := fs.String("status", "", "pending or dead")
	limit := fs.Int("limit", 1000, "at most this many, oldest first (0: all)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > 0 {
		return nil, usageError{fmt.Sprintf("%s takes no arguments, got %q: use --endpoint ID or --status", cmd, pos[0])}
	}
	f := deliver.ListFilter{Status: *status, Limit: *limit}
	if *status != "" && *status != "pending" && *status != "dead" {
		return nil, usageError{fmt.Sprintf("%s: --status %q is not valid: use pending or dead", cmd, *status)}
	}
	if *limit < 0 {
		return nil, usageError{fmt.Sprintf("%s: --limit must not be negative, got %d", cmd, *limit)}
	}
	if *endpoint != "" {
		if f.EndpointID, err = parseEndpoint(cmd, *endpoint); err != nil {
			return nil, err
		}
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		ds, err := deliver.ListDeliveries(ctx, conn, f)
		if err != nil {
			return err
		}
		if *asJSON {
			if ds == nil {
				ds = []deliver.Delivery{}
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(ds)
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tSTATUS\tENDPOINT\tEVENT ID\tTYPE\tATTEMPTS\tNEXT ATTEMPT / DEAD AT\tLAST ERROR / WHY DEAD")
		for _, d := range ds {
			when := ""
			switch {
			case d.DeadAt != nil:
				when = d.DeadAt.UTC().Format(time.RFC3339)
			case !d.Head:
				when = "behind an earlier delivery"
			case d.LockedUntil != nil:
				when = "being attempted"
			case d.NextAttemptAt != nil:
				when = d.NextAttemptAt.UTC().Format(time.RFC3339)
			}
			why := d.LastError
			if why == "" {
				why = d.DeadReason
			}
			fmt.Fprintf(w, "%d\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", d.ID, d.Status, d.EndpointID, d.EventID, d.EventType,
				d.Attempts, when, clip(why, 70))
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if len(ds) == 0 {
			fmt.Fprintln(stdout, "(no deliveries)")
		} else if f.Limit > 0 && len(ds) == f.Limit {
			fmt.Fprintf(stdout, "(the first %d; use --limit to see more)\n", f.Limit)
		}
		return nil
	}, nil
}

func deliveriesShow(args []string, stdout io.Writer) (func(context.Context, *pgx.Conn) error, error) {
	const cmd = "deliveries show"
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) != 1 {
		return nil, usageError{fmt.Sprintf("%s needs exactly one delivery id, got %d arguments", cmd, len(pos))}
	}
	id, err := parseDeliveryID(cmd, pos[0])
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		d, ev, attempts, err := deliver.GetDelivery(ctx, conn, id)
		if err != nil {
			return err
		}
		body := deliver.AppendBody(nil, &ev, true)
		if *asJSON {
			type attemptJSON struct {
				AttemptedAt     time.Time `json:"attempted_at"`
				StatusCode      int       `json:"status_code,omitempty"`
				DurationSeconds *float64  `json:"duration_seconds,omitempty"`
				Error           string    `json:"error"`
				ResponseBody    string    `json:"response_body,omitempty"`
			}
			out := struct {
				Delivery deliver.Delivery `json:"delivery"`
				Body     json.RawMessage  `json:"body"`
				Attempts []attemptJSON    `json:"attempts"`
			}{Delivery: d, Body: body, Attempts: []attemptJSON{}}
			for _, a := range attempts {
				aj := attemptJSON{AttemptedAt: a.AttemptedAt, StatusCode: a.StatusCode, Error: a.Error,
					ResponseBody: strings.ToValidUTF8(string(a.ResponseBody), "\uFFFD")}
				if a.Duration != nil {
					s := a.Duration.Seconds()
					aj.DurationSeconds = &s
				}
				out.Attempts = append(out.Attempts, aj)
			}
			enc := json.NewEncoder(stdout)
			enc.SetIndent("", "  ")
			enc.SetEscapeHTML(false)
			return enc.Encode(out)
		}
		w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintf(w, "delivery\t%d\n", d.ID)
		fmt.Fprintf(w, "status\t%s\n", d.Status)
		fmt.Fprintf(w, "event id\t%s\n", d.EventID)
		fmt.Fprintf(w, "endpoint\t%d\n", d.EndpointID)
		fmt.Fprintf(w, "event\t%s %s, committed %s\n", d.EventType, d.Table, d.OccurredAt.UTC().Format(deliver.OccurredAtLayout))
		fmt.Fprintf(w, "queued\t%s\n", d.CreatedAt.UTC().Format(time.RFC3339))
		fmt.Fprintf(w, "attempts\t%d (retry delays used: %d)\n", d.Attempts, d.Retries)
		if d.FirstFailureAt != nil {
			fmt.Fprintf(w, "first failure\t%s\n", d.FirstFailureAt.UTC().Format(time.RFC3339))
		}
		switch {
		case d.DeadAt != nil:
			fmt.Fprintf(w, "dead since\t%s\n", d.DeadAt.UTC().Format(time.RFC3339))
			fmt.Fprintf(w, "dead because\t%s\n", d.DeadReason)
		case !d.Head:
			fmt.Fprintf(w, "next attempt\tafter the earlier deliveries of its group to this endpoint\n")
		case d.LockedUntil != nil:
			fmt.Fprintf(w, "next attempt\tnow (leased by %s until %s)\n", d.LockedBy, d.LockedUntil.UTC().Format(time.RFC3339))
		case d.NextAttemptAt != nil:
			fmt.Fprintf(w, "next attempt\t%s\n", d.NextAttemptAt.UTC().Format(time.RFC3339))
		}
		if d.LastError != "" {
			fmt.Fprintf(w, "last error\t%s\n", d.LastError)
		}
		if err := w.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "body (include_data):\n  %s\n", body)
		if len(attempts) == 0 {
			fmt.Fprintln(stdout, "no failed attempts recorded")
			return nil
		}
		fmt.Fprintln(stdout, "attempts:")
		for _, a := range attempts {
			status, dur := "-", "in memory"
			if a.StatusCode != 0 {
				status = strconv.Itoa(a.StatusCode)
			}
			if a.Duration != nil {
				dur = a.Duration.Round(time.Microsecond).String()
			}
			fmt.Fprintf(stdout, "  %s  %s  %s  %s\n", a.AttemptedAt.UTC().Format(time.RFC3339Nano), status, dur, a.Error)
			if len(a.ResponseBody) > 0 {
				fmt.Fprintf(stdout, "      response: %s\n", clip(strings.ToValidUTF8(string(a.ResponseBody), "\uFFFD"), 300))
			}
		}
		return nil
	}, nil
}

func deliveriesReplay(args []string, stdout io.Writer) (func(context.Context, *pgx.Conn) error, error) {
	const cmd = "deliveries replay"
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	endpoint := fs.String("endpoint", "", "replay the dead deliveries of this endpoint id")
	since := fs.String("since", "", "with --endpoint: only events that occurred at or after this time")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	var sel deliver.ReplaySelector
	switch {
	case *endpoint == "" && len(pos) == 0:
		return nil, usageError{cmd + " needs --endpoint ID or delivery ids"}
	case *endpoint != "" && len(pos) > 0:
		return nil, usageError{cmd + " takes --endpoint ID or delivery ids, not both"}
	case *since != "" && *endpoint == "":
		return nil, usageError{cmd + ": --since goes with --endpoint, not with delivery ids"}
	case *endpoint != "":
		if sel.EndpointID, err = parseEndpoint(cmd, *endpoint); err != nil {
			return nil, err
		}
		if *since != "" {
			if sel.Since, err = parseSince(cmd, *since, time.Now()); err != nil {
				return nil, err
			}
		}
	default:
		for _, p := range pos {
			id, err := parseDeliveryID(cmd, p)
			if err != nil {
				return nil, err
			}
			sel.IDs = append(sel.IDs, id)
		}
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		res, err := deliver.ReplayDeliveries(ctx, conn, sel)
		if err != nil {
			return err
		}
		if res.Replayed == 0 {
			fmt.Fprintln(stdout, "no dead deliveries to replay")
			return nil
		}
		fmt.Fprintf(stdout, "replayed %d dead deliveries; they are back in the queue with their original ids\n", res.Replayed)
		for _, id := range res.EndpointsDisabled {
			fmt.Fprintf(stdout, "endpoint %d is disabled: its deliveries wait until you enable it (UPDATE grouphook.endpoints SET enabled = true WHERE id = %d)\n", id, id)
		}
		return nil
	}, nil
}

func clip(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= n {
		return s
	}
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
