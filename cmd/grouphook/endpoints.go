package main

// grouphook endpoints: manage grouphook.endpoints against DATABASE_URL,
// through the same functions of package deliver as the admin API.

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

	"github.com/grouphook/grouphook/deliver"
)

const endpointsUsage = `grouphook endpoints add --url U [--client C] [--events CREATE,UPDATE,DELETE] [--no-data] [--secret S] [--disabled] [--json]
grouphook endpoints list [--client C] [--json]
grouphook endpoints show [--json] ID
grouphook endpoints update ID [--url U] [--client C | --no-client] [--events E] [--data | --no-data] [--json]
grouphook endpoints enable ID
grouphook endpoints disable ID
grouphook endpoints remove ID
grouphook endpoints rotate-secret ID [--secret S] [--overlap 24h] [--json]`

// endpointsCommand runs "grouphook endpoints <subcommand> ...". A wrong
// command line is a usageError (exit 2) and touches nothing; invalid
// input or an unknown id is one sentence (exit 1) and writes nothing. A
// secret is printed only by add and rotate-secret.
func endpointsCommand(ctx context.Context, cfg Config, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return usageError{"endpoints needs a subcommand: add, list, show, update, enable, disable, remove or rotate-secret\n" + endpointsUsage}
	}
	var (
		run func(context.Context, *pgx.Conn) error
		err error
	)
	sub, rest := args[0], args[1:]
	switch sub {
	case "add":
		run, err = endpointsAdd(rest, stdout)
	case "list":
		run, err = endpointsList(rest, stdout)
	case "show":
		run, err = endpointsShow(rest, stdout)
	case "update":
		run, err = endpointsUpdate(rest, stdout)
	case "enable", "disable":
		run, err = endpointsEnable(sub, rest, stdout)
	case "remove":
		run, err = endpointsRemove(rest, stdout)
	case "rotate-secret":
		run, err = endpointsRotate(rest, cfg.RotationOverlap, stdout)
	default:
		return usageError{fmt.Sprintf("unknown endpoints subcommand %q: use add, list, show, update, enable, disable, remove or rotate-secret", sub)}
	}
	if err != nil {
		return err
	}
	conn, err := pgx.Connect(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("connect to DATABASE_URL: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	err = run(ctx, conn)
	var ie *deliver.InputError
	if errors.As(err, &ie) {
		return errors.New(ie.Msg + "; nothing was written")
	}
	if isUndefinedTable(err) {
		return fmt.Errorf("table %s is missing or out of date: run grouphook migrate first", deliver.EndpointsTable)
	}
	return err
}

// endpointIDArg parses the one positional ID of a subcommand.
func endpointIDArg(cmd string, pos []string) (int64, error) {
	if len(pos) != 1 {
		return 0, usageError{fmt.Sprintf("endpoints %s needs exactly one endpoint id, got %d arguments", cmd, len(pos))}
	}
	id, err := strconv.ParseInt(strings.TrimSpace(pos[0]), 10, 64)
	if err != nil || id <= 0 {
		return 0, usageError{fmt.Sprintf("endpoints %s: %q is not an endpoint id: give the number grouphook endpoints list shows", cmd, clipText(pos[0], 40))}
	}
	return id, nil
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	return set
}

func splitEvents(s string) []string {
	if strings.TrimSpace(s) == "" {
		return []string{}
	}
	return strings.Split(s, ",")
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

func describeEndpoint(e deliver.EndpointInfo) string {
	client := "every client"
	if e.ClientID != nil {
		client = "client " + strconv.Quote(*e.ClientID)
	}
	data := "full data"
	if !e.IncludeData {
		data = "keys only"
	}
	state := "enabled"
	if !e.Enabled {
		state = "disabled"
	}
	return fmt.Sprintf("endpoint %d (%s, %s, %s, %s)", e.ID, client, strings.Join(e.Events, ","), data, state)
}

func printEndpoint(w io.Writer, e deliver.EndpointInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%d\n", e.ID)
	fmt.Fprintf(tw, "url\t%s\n", e.URL)
	if e.ClientID != nil {
		fmt.Fprintf(tw, "client\t%s\n", *e.ClientID)
	} else {
		fmt.Fprintf(tw, "client\t(none: every client's groups)\n")
	}
	fmt.Fprintf(tw, "events\t%s\n", strings.Join(e.Events, ","))
	fmt.Fprintf(tw, "include data\t%v\n", e.IncludeData)
	fmt.Fprintf(tw, "enabled\t%v\n", e.Enabled)
	if e.DisabledReason != nil {
		fmt.Fprintf(tw, "disabled because\t%s\n", *e.DisabledReason)
	}
	if e.DisabledAt != nil {
		fmt.Fprintf(tw, "disabled at\t%s\n", e.DisabledAt.UTC().Format(time.RFC3339))
	}
	if e.LastSuccessAt != nil {
		fmt.Fprintf(tw, "last success\t%s\n", e.LastSuccessAt.UTC().Format(time.RFC3339))
	}
	if e.FailingSince != nil {
		fmt.Fprintf(tw, "failing since\t%s\n", e.FailingSince.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "secret\t(hidden; grouphook endpoints rotate-secret %d makes a new one)\n", e.ID)
	if e.PreviousSecretExpiresAt != nil {
		fmt.Fprintf(tw, "previous secret\tstill signs webhook-signature until %s\n", e.PreviousSecretExpiresAt.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(tw, "created\t%s\n", e.CreatedAt.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "updated\t%s\n", e.UpdatedAt.UTC().Format(time.RFC3339))
	return tw.Flush()
}

func endpointsAdd(args []string, stdout io.Writer) (func(context.Context, *pgx.Conn) error, error) {
	fs := flag.NewFlagSet("endpoints add", flag.ContinueOnError)
	url := fs.String("url", "", "the absolute http(s) URL to deliver to (required)")
	client := fs.String("client", "", "only this client's groups (with GROUPHOOK_TENANT_COLUMN)")
	events := fs.String("events", "CREATE,UPDATE,DELETE", "comma list of event types")
	noData := fs.Bool("no-data", false, "send only the primary-key columns")
	secret := fs.String("secret", "", "the signing secret (default: generated)")
	disabled := fs.Bool("disabled", false, "add it disabled")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > 0 {
		return nil, usageError{fmt.Sprintf("endpoints add takes no arguments, got %q: use --url", clipText(pos[0], 40))}
	}
	set := setFlags(fs)
	if !set["url"] {
		return nil, usageError{"endpoints add needs --url: the absolute http(s) URL to deliver to"}
	}
	ne := deliver.NewEndpoint{URL: *url, NoData: *noData, Disabled: *disabled, Secret: *secret}
	if set["client"] {
		ne.ClientID = client
	}
	if set["events"] {
		ne.Events = splitEvents(*events)
	}
	if set["secret"] && *secret == "" {
		return nil, usageError{"endpoints add: --secret is empty: leave it out to have one generated"}
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		info, secret, err := deliver.AddEndpoint(ctx, conn, ne)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, endpointWithSecret{Endpoint: info, Secret: secret})
		}
		fmt.Fprintf(stdout, "added %s\n", describeEndpoint(info))
		fmt.Fprintf(stdout, "secret: %s\n", secret)
		fmt.Fprintf(stdout, "Give the secret to the client now: it is not shown again (grouphook endpoints rotate-secret %d makes a new one).\n", info.ID)
		return nil
	}, nil
}

func endpointsList(args []string, stdout io.Writer) (func(context.Context, *pgx.Conn) error, error) {
	fs := flag.NewFlagSet("endpoints list", flag.ContinueOnError)
	client := fs.String("client", "", "only this client's endpoints")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > 0 {
		return nil, usageError{fmt.Sprintf("endpoints list takes no arguments, got %q: use --client C", clipText(pos[0], 40))}
	}
	var f deliver.EndpointFilter
	if setFlags(fs)["client"] {
		f.ClientID = client
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		eps, err := deliver.ListEndpoints(ctx, conn, f)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, eps)
		}
		if len(eps) == 0 {
			fmt.Fprintln(stdout, "(no endpoints; add one with grouphook endpoints add --url URL)")
			return nil
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tCLIENT\tEVENTS\tDATA\tSTATE\tURL")
		for _, e := range eps {
			client, data, state := "-", "full", "enabled"
			if e.ClientID != nil {
				client = *e.ClientID
			}
			if !e.IncludeData {
				data = "keys"
			}
			if !e.Enabled {
				state = "disabled"
			}
			if e.PreviousSecretExpiresAt != nil {
				state += ", rotating"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.ID, client, strings.Join(e.Events, ","), data, state, e.URL)
		}
		return tw.Flush()
	}, nil
}

func endpointsShow(args []string, stdout io.Writer) (func(context.Context, *pgx.Conn) error, error) {
	fs := flag.NewFlagSet("endpoints show", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	id, err := endpointIDArg("show", pos)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		info, err := deliver.GetEndpoint(ctx, conn, id)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, info)
		}
		return printEndpoint(stdout, info)
	}, nil
}

func endpointsUpdate(args []string, stdout io.Writer) (func(context.Context, *pgx.Conn) error, error) {
	fs := flag.NewFlagSet("endpoints update", flag.ContinueOnError)
	url := fs.String("url", "", "a new URL")
	client := fs.String("client", "", "a new client")
	noClient := fs.Bool("no-client", false, "no client: every client's groups")
	events := fs.String("events", "", "a new comma list of event types")
	data := fs.Bool("data", false, "send the client-facing columns")
	noData := fs.Bool("no-data", false, "send only the primary-key columns")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	id, err := endpointIDArg("update", pos)
	if err != nil {
		return nil, err
	}
	set := setFlags(fs)
	var u deliver.EndpointUpdate
	if set["url"] {
		u.URL = url
	}
	switch {
	case set["client"] && set["no-client"]:
		return nil, usageError{"endpoints update: give --client C or --no-client, not both"}
	case set["client"]:
		u.ClientID = client
	case set["no-client"]:
		u.ClearClient = *noClient
	}
	if set["events"] {
		u.Events = splitEvents(*events)
	}
	switch {
	case set["data"] && set["no-data"]:
		return nil, usageError{"endpoints update: give --data or --no-data, not both"}
	case set["data"]:
		u.IncludeData = data
	case set["no-data"]:
		v := !*noData
		u.IncludeData = &v
	}
	if u.Empty() {
		return nil, usageError{"endpoints update needs something to change: --url, --client, --no-client, --events, --data or --no-data (use rotate-secret for the secret)"}
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		info, err := deliver.UpdateEndpoint(ctx, conn, id, u)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, info)
		}
		fmt.Fprintf(stdout, "updated %s; running grouphook processes use it within GROUPHOOK_ENDPOINT_REFRESH\n", describeEndpoint(info))
		return nil
	}, nil
}

func endpointsEnable(cmd string, args []string, stdout io.Writer) (func(context.Context, *pgx.Conn) error, error) {
	fs := flag.NewFlagSet("endpoints "+cmd, flag.ContinueOnError)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	id, err := endpointIDArg(cmd, pos)
	if err != nil {
		return nil, err
	}
	on := cmd == "enable"
	return func(ctx context.Context, conn *pgx.Conn) error {
		info, err := deliver.SetEndpointEnabled(ctx, conn, id, on)
		if err != nil {
			return err
		}
		if on {
			fmt.Fprintf(stdout, "enabled %s; its queued deliveries resume\n", describeEndpoint(info))
		} else {
			fmt.Fprintf(stdout, "disabled %s; it gets no new events, and its queued deliveries wait until it is enabled\n", describeEndpoint(info))
		}
		return nil
	}, nil
}

func endpointsRemove(args []string, stdout io.Writer) (func(context.Context, *pgx.Conn) error, error) {
	fs := flag.NewFlagSet("endpoints remove", flag.ContinueOnError)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	id, err := endpointIDArg("remove", pos)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		if err := deliver.RemoveEndpoint(ctx, conn, id); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed endpoint %d and its queued deliveries\n", id)
		return nil
	}, nil
}

func endpointsRotate(args []string, defaultOverlap time.Duration, stdout io.Writer) (func(context.Context, *pgx.Conn) error, error) {
	fs := flag.NewFlagSet("endpoints rotate-secret", flag.ContinueOnError)
	secret := fs.String("secret", "", "the new secret (default: generated)")
	overlap := fs.Duration("overlap", defaultOverlap, "how long the old secret keeps signing (default GROUPHOOK_ROTATION_OVERLAP); 0 revokes it now")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, err
	}
	id, err := endpointIDArg("rotate-secret", pos)
	if err != nil {
		return nil, err
	}
	if *overlap < 0 {
		return nil, usageError{fmt.Sprintf("endpoints rotate-secret: --overlap must not be negative, got %s", *overlap)}
	}
	if setFlags(fs)["secret"] && *secret == "" {
		return nil, usageError{"endpoints rotate-secret: --secret is empty: leave it out to have one generated"}
	}
	return func(ctx context.Context, conn *pgx.Conn) error {
		info, newSecret, err := deliver.RotateSecret(ctx, conn, id, *secret, *overlap)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(stdout, endpointWithSecret{Endpoint: info, Secret: newSecret})
		}
		fmt.Fprintf(stdout, "rotated the secret of %s\n", describeEndpoint(info))
		fmt.Fprintf(stdout, "new secret: %s\n", newSecret)
		if info.PreviousSecretExpiresAt != nil {
			fmt.Fprintf(stdout, "Until %s webhook-signature carries a signature with the old secret and one with the new, so the client can switch without missing a callback; x-hashed-key uses the new secret from now on.\n",
				info.PreviousSecretExpiresAt.UTC().Format(time.RFC3339))
		} else {
			fmt.Fprintln(stdout, "The old secret no longer signs anything.")
		}
		fmt.Fprintln(stdout, "Give the new secret to the client now: it is not shown again.")
		return nil
	}, nil
}
