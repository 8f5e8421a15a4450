package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/sethvargo/go-envconfig"

	"github.com/grouphook/grouphook/deliver"
	"github.com/grouphook/grouphook/sql"
)

// Config is every setting grouphook reads, all from the environment. Load
// fills defaults and validates it once; nothing else reads the environment.
type Config struct {
	DatabaseURL     string        `env:"DATABASE_URL"`
	Table           string        `env:"GROUPHOOK_TABLE, default=public.groups"`
	Slot            string        `env:"GROUPHOOK_SLOT, default=grouphook"`
	Publication     string        `env:"GROUPHOOK_PUBLICATION, default=grouphook"`
	Fields          []string      `env:"GROUPHOOK_FIELDS"`
	TenantColumn    string        `env:"GROUPHOOK_TENANT_COLUMN"`
	ReplicaIdentity string        `env:"GROUPHOOK_REPLICA_IDENTITY, default=full"`
	HTTPAddr        string        `env:"GROUPHOOK_HTTP_ADDR, default=:9187"`
	DeliveryTimeout time.Duration `env:"GROUPHOOK_DELIVERY_TIMEOUT, default=10s"`
	ShutdownTimeout time.Duration `env:"GROUPHOOK_SHUTDOWN_TIMEOUT, default=10s"`
	Workers         int           `env:"GROUPHOOK_WORKERS, default=64"`
	MaxInFlight     int           `env:"GROUPHOOK_MAX_IN_FLIGHT, default=10000"`
	RetryMin        time.Duration `env:"GROUPHOOK_RETRY_MIN, default=1s"`
	RetryMax        time.Duration `env:"GROUPHOOK_RETRY_MAX, default=60s"`
	StatusInterval  time.Duration `env:"GROUPHOOK_STATUS_INTERVAL, default=10s"`
	EndpointRefresh time.Duration `env:"GROUPHOOK_ENDPOINT_REFRESH, default=1s"`
	LogLevel        string        `env:"GROUPHOOK_LOG_LEVEL, default=info"`
	LogFormat       string        `env:"GROUPHOOK_LOG_FORMAT, default=json"`
	Pprof           bool          `env:"GROUPHOOK_PPROF, default=false"`

	// Idle-database safety (cdc/health.go).
	HeartbeatInterval time.Duration `env:"GROUPHOOK_HEARTBEAT_INTERVAL, default=1m"`
	SlotCheckInterval time.Duration `env:"GROUPHOOK_SLOT_CHECK_INTERVAL, default=30s"`

	// The durable queue (deliver.Queue).
	ParkAfter         time.Duration `env:"GROUPHOOK_PARK_AFTER, default=10s"`
	RetrySchedule     string        `env:"GROUPHOOK_RETRY_SCHEDULE, default=5s,5m,30m,2h,5h,10h,10h"`
	DeadRetention     time.Duration `env:"GROUPHOOK_DEAD_RETENTION, default=336h"`
	DisableAfter      time.Duration `env:"GROUPHOOK_DISABLE_AFTER, default=120h"`
	QueueWorkers      int           `env:"GROUPHOOK_QUEUE_WORKERS, default=8"`
	QueuePollInterval time.Duration `env:"GROUPHOOK_QUEUE_POLL_INTERVAL, default=1s"`

	// Endpoint management and security (admin.go, security.go).
	AdminToken               string        `env:"GROUPHOOK_ADMIN_TOKEN"`
	RotationOverlap          time.Duration `env:"GROUPHOOK_ROTATION_OVERLAP, default=24h"`
	AllowPrivateDestinations bool          `env:"GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS, default=false"`
	AllowedCIDRs             []string      `env:"GROUPHOOK_ALLOWED_CIDRS"`
	RequireHTTPS             bool          `env:"GROUPHOOK_REQUIRE_HTTPS, default=false"`
	CAFile                   string        `env:"GROUPHOOK_CA_FILE"`
}

var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

// LoadConfig reads the configuration through l (envconfig.OsLookuper() in
// main) and validates it. It also returns one warning per GROUPHOOK_*
// variable in environ that grouphook does not know, so a typo is visible.
func LoadConfig(ctx context.Context, l envconfig.Lookuper, environ []string) (Config, []string, error) {
	var c Config
	if err := envconfig.ProcessWith(ctx, &envconfig.Config{Target: &c, Lookuper: l}); err != nil {
		return c, nil, envError(err)
	}
	if err := c.validate(); err != nil {
		return c, nil, err
	}
	return c, unknownVariables(environ), nil
}

// envError names the variable in an envconfig error, which starts with the
// Go field's name ("DeliveryTimeout: time: invalid duration ..."), so the
// operator knows which setting to fix.
func envError(err error) error {
	t := reflect.TypeOf(Config{})
	for i := range t.NumField() {
		f := t.Field(i)
		if !strings.HasPrefix(err.Error(), f.Name+": ") {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		cause := errors.Unwrap(err)
		if cause == nil {
			cause = err
		}
		hint := "fix its value"
		switch f.Type.Kind() {
		case reflect.Int64:
			if f.Type == reflect.TypeOf(time.Duration(0)) {
				hint = "use a duration such as 10s or 500ms"
			}
		case reflect.Int:
			hint = "use a whole number"
		}
		return fmt.Errorf("%s is not valid (%w): %s", strings.TrimSpace(name), cause, hint)
	}
	return fmt.Errorf("read configuration: %w", err)
}

func (c *Config) validate() error {
	if c.DatabaseURL == "" {
		return errors.New("DATABASE_URL is not set: set it to the application database's connection string, e.g. postgres://grouphook@db:5432/app")
	}
	if _, err := pgconn.ParseConfig(c.DatabaseURL); err != nil {
		return fmt.Errorf("DATABASE_URL is not a valid connection string: %w", err)
	}
	if _, _, err := sql.SplitTable(c.Table); err != nil {
		return fmt.Errorf("GROUPHOOK_TABLE: %w", err)
	}
	if !slotName.MatchString(c.Slot) {
		return fmt.Errorf("GROUPHOOK_SLOT %q is not a valid slot name: use 1 to 63 lower-case letters, digits and underscores", c.Slot)
	}
	if c.Publication == "" {
		return errors.New("GROUPHOOK_PUBLICATION is empty: set a publication name or unset it for the default grouphook")
	}
	seen := map[string]bool{}
	fields := c.Fields[:0]
	for _, f := range c.Fields {
		f = strings.TrimSpace(f)
		if f == "" {
			return errors.New("GROUPHOOK_FIELDS has an empty entry: give a comma list of column names, e.g. id,name,description")
		}
		if seen[f] {
			return fmt.Errorf("GROUPHOOK_FIELDS names column %q twice: list each column once", f)
		}
		seen[f] = true
		fields = append(fields, f)
	}
	c.Fields = fields
	c.TenantColumn = strings.TrimSpace(c.TenantColumn)
	switch c.ReplicaIdentity {
	case "full", "keep":
	default:
		return fmt.Errorf("GROUPHOOK_REPLICA_IDENTITY %q is not valid: use full (default) or keep", c.ReplicaIdentity)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"GROUPHOOK_DELIVERY_TIMEOUT", c.DeliveryTimeout},
		{"GROUPHOOK_SHUTDOWN_TIMEOUT", c.ShutdownTimeout},
		{"GROUPHOOK_RETRY_MIN", c.RetryMin},
		{"GROUPHOOK_RETRY_MAX", c.RetryMax},
		{"GROUPHOOK_STATUS_INTERVAL", c.StatusInterval},
		{"GROUPHOOK_ENDPOINT_REFRESH", c.EndpointRefresh},
		{"GROUPHOOK_PARK_AFTER", c.ParkAfter},
		{"GROUPHOOK_DEAD_RETENTION", c.DeadRetention},
		{"GROUPHOOK_DISABLE_AFTER", c.DisableAfter},
		{"GROUPHOOK_QUEUE_POLL_INTERVAL", c.QueuePollInterval},
	} {
		if d.v <= 0 {
			return fmt.Errorf("%s must be a positive duration such as 10s, got %s", d.name, d.v)
		}
	}
	if c.HeartbeatInterval < 0 {
		return fmt.Errorf("GROUPHOOK_HEARTBEAT_INTERVAL must be a duration such as 1m, or 0 to disable the heartbeat, got %s", c.HeartbeatInterval)
	}
	if c.SlotCheckInterval <= 0 {
		return fmt.Errorf("GROUPHOOK_SLOT_CHECK_INTERVAL must be a positive duration such as 30s, got %s", c.SlotCheckInterval)
	}
	if c.RetryMax < c.RetryMin {
		return fmt.Errorf("GROUPHOOK_RETRY_MAX (%s) is shorter than GROUPHOOK_RETRY_MIN (%s): raise the maximum", c.RetryMax, c.RetryMin)
	}
	if c.StatusInterval > 30*time.Second {
		return fmt.Errorf("GROUPHOOK_STATUS_INTERVAL %s is too long: the server ends silent replication connections after wal_sender_timeout (60s by default); use 30s or less", c.StatusInterval)
	}
	if c.Workers < 1 {
		return fmt.Errorf("GROUPHOOK_WORKERS must be at least 1, got %d", c.Workers)
	}
	if _, err := deliver.ParseSchedule(c.RetrySchedule); err != nil {
		return fmt.Errorf("GROUPHOOK_RETRY_SCHEDULE %q is not valid (%v): use a comma list of positive durations such as %s", c.RetrySchedule, err, deliver.DefaultScheduleText)
	}
	if c.QueueWorkers < 1 {
		return fmt.Errorf("GROUPHOOK_QUEUE_WORKERS must be at least 1, got %d", c.QueueWorkers)
	}
	if c.MaxInFlight < 1 {
		return fmt.Errorf("GROUPHOOK_MAX_IN_FLIGHT must be at least 1, got %d", c.MaxInFlight)
	}
	if err := c.validateSecurity(); err != nil { // security.go
		return err
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		return fmt.Errorf("GROUPHOOK_LOG_FORMAT %q is not valid: use json or text", c.LogFormat)
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return l, fmt.Errorf("GROUPHOOK_LOG_LEVEL %q is not valid: use debug, info, warn or error", s)
	}
	return l, nil
}

// knownVariables lists every variable Config reads, from its tags.
func knownVariables() []string {
	t := reflect.TypeOf(Config{})
	names := make([]string, 0, t.NumField())
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("env"), ",")
		names = append(names, strings.TrimSpace(name))
	}
	sort.Strings(names)
	return names
}

func unknownVariables(environ []string) []string {
	known := map[string]bool{}
	for _, n := range knownVariables() {
		known[n] = true
	}
	var unknown []string
	for _, kv := range environ {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "GROUPHOOK_") && !known[name] {
			unknown = append(unknown, name)
		}
	}
	sort.Strings(unknown)
	return unknown
}

func newLogger(c Config, w interface{ Write([]byte) (int, error) }) *slog.Logger {
	level, _ := parseLevel(c.LogLevel)
	opts := &slog.HandlerOptions{Level: level}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
