// Package pgcluster starts a throwaway PostgreSQL cluster from the local
// server binaries, with wal_level=logical, on a free loopback port. Tests,
// the demo and the benchmark use it; it never touches an existing cluster.
//
// initdb refuses to run as root, so when the process is root the server
// runs as the "postgres" user through runuser, in a directory it owns.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Options tune the cluster. The zero value is fine.
type Options struct {
	// Settings are extra postgresql.conf lines, e.g. "max_wal_senders = 20".
	Settings []string
	// Log receives the server's log output; nil discards it.
	Log *os.File
}

// Cluster is a running throwaway PostgreSQL. Stop removes it.
type Cluster struct {
	dir   string
	bin   string
	port  int
	runAs string // "" when the process is not root
	logf  string

	// lazy is set for a package's shared test cluster (RunTests): it
	// starts on first use, so unit tests and fuzz workers never start one.
	lazy *lazyStart
}

// BinDir finds the directory holding initdb and pg_ctl: $PG_BIN if set, else
// the newest /usr/lib/postgresql/*/bin, else the PATH.
func BinDir() (string, error) {
	if d := os.Getenv("PG_BIN"); d != "" {
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", errors.New("PostgreSQL server binaries (initdb, pg_ctl) not found: install postgresql (apt-get install postgresql) or set PG_BIN")
}

func versionOf(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

// Start creates and starts a cluster. The caller must call Stop.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "grouphook-pg-")
	if err != nil {
		return nil, fmt.Errorf("create cluster directory: %w", err)
	}
	c := &Cluster{dir: dir, bin: bin, logf: filepath.Join(dir, "server.log")}
	if os.Geteuid() == 0 {
		c.runAs = "postgres"
		u, err := user.Lookup(c.runAs)
		if err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("running as root needs the postgres user to run the server: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("hand the cluster directory to postgres: %w", err)
		}
	}
	data := filepath.Join(dir, "data")
	if out, err := c.run(ctx, "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("initdb: %w: %s", err, out)
	}
	conf := []string{
		"listen_addresses = '127.0.0.1'",
		"unix_socket_directories = '" + dir + "'",
		"wal_level = logical",
		"max_wal_senders = 40",
		"max_replication_slots = 40",
		"max_connections = 200",
		"fsync = off",
		"full_page_writes = off",
		"wal_sender_timeout = 60s",
	}
	conf = append(conf, opts.Settings...)
	f, err := os.OpenFile(filepath.Join(data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("open postgresql.conf: %w", err)
	}
	_, err = f.WriteString("\n" + strings.Join(conf, "\n") + "\n")
	f.Close()
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("write postgresql.conf: %w", err)
	}
	// A free port can be taken between the probe and the server's bind;
	// retry a few times.
	for attempt := 0; ; attempt++ {
		c.port, err = freePort()
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		out, err := c.run(ctx, "pg_ctl", "-D", data, "-l", c.logf, "-w", "-t", "60", "-o", "-p "+strconv.Itoa(c.port), "start")
		if err == nil {
			break
		}
		if attempt == 4 {
			log, _ := os.ReadFile(c.logf)
			os.RemoveAll(dir)
			return nil, fmt.Errorf("pg_ctl start: %w: %s\n%s", err, out, log)
		}
	}
	return c, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	path := filepath.Join(c.bin, name)
	var cmd *exec.Cmd
	if c.runAs != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", c.runAs, "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	cmd.Dir = c.dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	// pg_ctl start leaves the postmaster running; it must not hold our pipes.
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	return out.Bytes(), err
}

// Port is the TCP port the server listens on.
func (c *Cluster) Port() int { c.mustStart(); return c.port }

// URL is a connection string for database db as the superuser postgres.
func (c *Cluster) URL(db string) string {
	c.mustStart()
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// CreateDatabase creates a new empty database and returns its URL.
func (c *Cluster) CreateDatabase(ctx context.Context, name string) (string, error) {
	if err := c.start(); err != nil {
		return "", err
	}
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("connect to throwaway cluster: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", fmt.Errorf("create database %s: %w", name, err)
	}
	return c.URL(name), nil
}

// ServerLog returns what the server logged so far, for test failure output.
func (c *Cluster) ServerLog() string {
	if c.lazy != nil && !c.lazy.started() {
		return ""
	}
	b, _ := os.ReadFile(c.logf)
	return string(b)
}

// Stop shuts the server down immediately and removes its files. It is safe
// to call more than once.
func (c *Cluster) Stop() error {
	if c == nil {
		return nil
	}
	if c.lazy != nil && !c.lazy.started() {
		return nil
	}
	if c.dir == "" {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := c.run(ctx, "pg_ctl", "-D", filepath.Join(c.dir, "data"), "-m", "immediate", "-w", "stop")
	rmErr := os.RemoveAll(c.dir)
	c.dir = ""
	if err != nil {
		return fmt.Errorf("pg_ctl stop: %w: %s", err, out)
	}
	return rmErr
}
