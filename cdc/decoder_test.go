package cdc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// --- building pgoutput messages by hand -------------------------------

type decCol struct {
	name  string
	oid   uint32
	ident bool // replica identity flag
}

func decRelation(id uint32, schema, table string, cols ...decCol) *pglogrepl.RelationMessage {
	m := &pglogrepl.RelationMessage{RelationID: id, Namespace: schema, RelationName: table, ReplicaIdentity: 'f', ColumnNum: uint16(len(cols))}
	for _, c := range cols {
		var flags uint8
		if c.ident {
			flags = 1
		}
		m.Columns = append(m.Columns, &pglogrepl.RelationMessageColumn{Flags: flags, Name: c.name, DataType: c.oid, TypeModifier: -1})
	}
	return m
}

// decToast stands for an unchanged TOASTed value ('u') in decTuple.
var decToast = new(int)

// decTuple builds tuple data: a string is text ('t'), nil is NULL ('n'),
// decToast is 'u'.
func decTuple(vals ...any) *pglogrepl.TupleData {
	t := &pglogrepl.TupleData{ColumnNum: uint16(len(vals))}
	for _, v := range vals {
		c := &pglogrepl.TupleDataColumn{}
		switch v := v.(type) {
		case nil:
			c.DataType = pglogrepl.TupleDataTypeNull
		case string:
			c.DataType, c.Data, c.Length = pglogrepl.TupleDataTypeText, []byte(v), uint32(len(v))
		case *int:
			c.DataType = pglogrepl.TupleDataTypeToast
		}
		t.Columns = append(t.Columns, c)
	}
	return t
}

// decInstall records m with primary key pk, as Relation does after its
// catalog lookups.
func decInstall(d *Decoder, m *pglogrepl.RelationMessage, pk ...string) {
	d.rels[m.RelationID] = d.plan(m, pk, nil)
	d.last = nil
}

func decBegin(d *Decoder, lsn pglogrepl.LSN) {
	d.Begin(&pglogrepl.BeginMessage{FinalLSN: lsn, CommitTime: time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), Xid: 7})
}

func decMust(t *testing.T, d *Decoder, m pglogrepl.Message) (Change, bool) {
	t.Helper()
	c, ok, err := d.Change(m)
	if err != nil {
		t.Fatalf("Change: %v", err)
	}
	return c, ok
}

func decExpect(t *testing.T, what string, got []byte, want string) {
	t.Helper()
	if want == "<nil>" {
		if got != nil {
			t.Errorf("%s: got %s, want nil", what, got)
		}
		return
	}
	if got == nil || string(got) != want {
		t.Errorf("%s:\n got %s\nwant %s", what, got, want)
	}
}

var decTestCols = []decCol{
	{"id", pgtype.Int8OID, true},
	{"tenant", pgtype.TextOID, false},
	{"name", pgtype.TextOID, false},
	{"big", pgtype.TextOID, false},
}

func TestDecoderUnitInsert(t *testing.T) {
	d := NewDecoder(DecoderConfig{Table: "groups", TenantColumn: "tenant"}, nil)
	decInstall(d, decRelation(100, "public", "groups", decTestCols...), "id")
	decBegin(d, 0x16B3A28)
	c, ok := decMust(t, d, &pglogrepl.InsertMessage{RelationID: 100, Tuple: decTuple("42", "acme", `a "b"`, nil)})
	if !ok {
		t.Fatal("insert skipped")
	}
	decExpect(t, "Row", c.Row, `{"id":42,"tenant":"acme","name":"a \"b\"","big":null}`)
	decExpect(t, "Key", c.Key, `{"id":42}`)
	decExpect(t, "Previous", c.Previous, "<nil>")
	if c.ID != "evt_00000000016B3A28_0" || c.Position != 0 || c.CommitLSN != 0x16B3A28 || c.Op != OpInsert || c.Table != "public.groups" {
		t.Errorf("meta: %+v", c)
	}
	if c.GroupKey != "2:42" || c.Tenant != "acme" || c.TenantNull {
		t.Errorf("group %q tenant %q null %v", c.GroupKey, c.Tenant, c.TenantNull)
	}
	if !c.CommitTime.Equal(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)) {
		t.Errorf("commit time %v", c.CommitTime)
	}
	// Changes do not share memory: a second change leaves the first alone.
	c2, _ := decMust(t, d, &pglogrepl.InsertMessage{RelationID: 100, Tuple: decTuple("43", nil, "zzzzzzzzzzzzzzzzzzzzzzz", "x")})
	decExpect(t, "first Row after second change", c.Row, `{"id":42,"tenant":"acme","name":"a \"b\"","big":null}`)
	if c2.ID != "evt_00000000016B3A28_1" || c2.Position != 1 || !c2.TenantNull || c2.Tenant != "" {
		t.Errorf("second: %+v", c2)
	}
}

func TestDecoderUnitUpdate(t *testing.T) {
	d := NewDecoder(DecoderConfig{Table: "groups", TenantColumn: "tenant"}, nil)
	decInstall(d, decRelation(100, "public", "groups", decTestCols...), "id")
	decBegin(d, 1)

	// FULL: the old row is known; 'u' takes the old value.
	c, ok := decMust(t, d, &pglogrepl.UpdateMessage{RelationID: 100,
		OldTupleType: pglogrepl.UpdateMessageTupleTypeOld, OldTuple: decTuple("1", "acme", "old", "BIG"),
		NewTuple: decTuple("1", "acme", "new", decToast)})
	if !ok {
		t.Fatal("update skipped")
	}
	decExpect(t, "Row", c.Row, `{"id":1,"tenant":"acme","name":"new","big":"BIG"}`)
	decExpect(t, "Previous", c.Previous, `{"name":"old"}`)

	// FULL, nothing changed: skipped, position still advances.
	_, ok = decMust(t, d, &pglogrepl.UpdateMessage{RelationID: 100,
		OldTupleType: pglogrepl.UpdateMessageTupleTypeOld, OldTuple: decTuple("1", "acme", "new", "BIG"),
		NewTuple: decTuple("1", "acme", "new", decToast)})
	if ok {
		t.Error("no-op update not skipped")
	}

	// NULL to value and value to NULL are changes.
	c, _ = decMust(t, d, &pglogrepl.UpdateMessage{RelationID: 100,
		OldTupleType: pglogrepl.UpdateMessageTupleTypeOld, OldTuple: decTuple("1", nil, "", "BIG"),
		NewTuple: decTuple("1", "acme", nil, decToast)})
	decExpect(t, "Previous null/empty", c.Previous, `{"tenant":null,"name":""}`)
	if c.Position != 2 {
		t.Errorf("position %d, want 2", c.Position)
	}

	// DEFAULT, key unchanged: no old tuple; 'u' is left out; always sent.
	c, ok = decMust(t, d, &pglogrepl.UpdateMessage{RelationID: 100, NewTuple: decTuple("1", "acme", "new", decToast)})
	if !ok {
		t.Fatal("update without old tuple skipped")
	}
	decExpect(t, "Row without old", c.Row, `{"id":1,"tenant":"acme","name":"new"}`)
	decExpect(t, "Previous without old", c.Previous, "<nil>")

	// DEFAULT, key changed: a key tuple whose 'n' outside the identity is
	// "not sent", not NULL.
	rel := decRelation(100, "public", "groups", decTestCols...)
	decInstall(d, rel, "id")
	c, ok = decMust(t, d, &pglogrepl.UpdateMessage{RelationID: 100,
		OldTupleType: pglogrepl.UpdateMessageTupleTypeKey, OldTuple: decTuple("1", nil, nil, nil),
		NewTuple: decTuple("2", "acme", "new", decToast)})
	if !ok {
		t.Fatal("key change skipped")
	}
	decExpect(t, "Row after key change", c.Row, `{"id":2,"tenant":"acme","name":"new"}`)
	decExpect(t, "Previous after key change", c.Previous, `{"id":1}`)
	decExpect(t, "Key after key change", c.Key, `{"id":2}`)
	if c.GroupKey != "1:2" {
		t.Errorf("group key %q", c.GroupKey)
	}
}

func TestDecoderUnitDelete(t *testing.T) {
	d := NewDecoder(DecoderConfig{Table: "groups", TenantColumn: "tenant", Fields: []string{"name", "id"}}, nil)
	decInstall(d, decRelation(100, "public", "groups", decTestCols...), "id")
	decBegin(d, 1)
	c, _ := decMust(t, d, &pglogrepl.DeleteMessage{RelationID: 100, OldTupleType: pglogrepl.DeleteMessageTupleTypeOld, OldTuple: decTuple("5", "acme", "gone", "BIG")})
	decExpect(t, "FULL Row", c.Row, `{"id":5,"name":"gone"}`)
	if c.Op != OpDelete || c.Tenant != "acme" || c.TenantNull {
		t.Errorf("%+v", c)
	}
	c, _ = decMust(t, d, &pglogrepl.DeleteMessage{RelationID: 100, OldTupleType: pglogrepl.DeleteMessageTupleTypeKey, OldTuple: decTuple("5", nil, nil, nil)})
	decExpect(t, "DEFAULT Row", c.Row, `{"id":5}`)
	if !c.TenantNull {
		t.Errorf("unknown tenant must be TenantNull: %+v", c)
	}
}

func TestDecoderUnitKeysAndFields(t *testing.T) {
	var logs bytes.Buffer
	d := NewDecoder(DecoderConfig{Table: "pairs", Fields: []string{"c", "b", "nope", "b"}, TenantColumn: "missing",
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}, nil)
	cols := []decCol{{"a", pgtype.Int4OID, true}, {"b", pgtype.TextOID, true}, {"c", pgtype.TextOID, true}}
	// Key order (b, a) differs from column order; every column is flagged,
	// as under REPLICA IDENTITY FULL, yet only the primary key is the key.
	decInstall(d, decRelation(7, "public", "pairs", cols...), "b", "a")
	decInstall(d, decRelation(7, "public", "pairs", cols...), "b", "a") // upsert: warns once
	decBegin(d, 1)
	c, _ := decMust(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: decTuple("1", "x:y", "<c>")})
	decExpect(t, "Row", c.Row, `{"b":"x:y","c":"<c>"}`)
	decExpect(t, "Key", c.Key, `{"b":"x:y"}`)
	if c.GroupKey != "3:x:y1:1" || !c.TenantNull {
		t.Errorf("group key %q tenant null %v", c.GroupKey, c.TenantNull)
	}
	if n := strings.Count(logs.String(), "field=nope"); n != 1 {
		t.Errorf("missing field logged %d times, want 1:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "column=missing"); n != 1 {
		t.Errorf("missing tenant column logged %d times, want 1:\n%s", n, logs.String())
	}

	// No primary key: Key {} and no group key.
	decInstall(d, decRelation(7, "public", "pairs", cols...))
	c, _ = decMust(t, d, &pglogrepl.InsertMessage{RelationID: 7, Tuple: decTuple("1", "x", "y")})
	decExpect(t, "Key without pk", c.Key, `{}`)
	if c.GroupKey != "" {
		t.Errorf("group key %q, want empty", c.GroupKey)
	}
}

func TestDecoderUnitErrors(t *testing.T) {
	d := NewDecoder(DecoderConfig{Table: "groups"}, nil)
	ins := &pglogrepl.InsertMessage{RelationID: 100, Tuple: decTuple("1", "t", "n", "b")}
	if _, _, err := d.Change(ins); !errors.Is(err, errNoTransaction) {
		t.Errorf("change before Begin: %v", err)
	}
	decBegin(d, 1)
	if _, _, err := d.Change(ins); err == nil || !strings.Contains(err.Error(), "unknown relation id 100") {
		t.Errorf("unknown relation: %v", err)
	}
	if _, _, err := d.Change(&pglogrepl.CommitMessage{}); err == nil {
		t.Error("commit accepted as a change")
	}
	if err := d.Relation(context.Background(), decRelation(100, "public", "groups", decTestCols...)); err != nil {
		t.Fatal(err)
	}
	if err := d.Relation(context.Background(), decRelation(101, "public", "other", decCol{"x", pgtype.Int4OID, false})); err != nil {
		t.Fatal(err)
	}
	c, ok := decMust(t, d, &pglogrepl.InsertMessage{RelationID: 101, Tuple: decTuple("1")})
	if ok {
		t.Errorf("other table not skipped: %+v", c)
	}
	if _, _, err := d.Change(&pglogrepl.InsertMessage{RelationID: 100, Tuple: decTuple("1")}); err == nil {
		t.Error("column count mismatch accepted")
	}
	bin := decTuple("1", "t", "n", "b")
	bin.Columns[0].DataType = pglogrepl.TupleDataTypeBinary
	if _, _, err := d.Change(&pglogrepl.InsertMessage{RelationID: 100, Tuple: bin}); err == nil {
		t.Error("binary column accepted")
	}
	// Position counts every change of the transaction, also failed ones.
	c, _ = decMust(t, d, ins)
	if c.Position != 4 || c.ID != "evt_0000000000000001_4" {
		t.Errorf("position %d id %s, want 4", c.Position, c.ID)
	}
	d.Reset()
	decBegin(d, 2)
	if _, _, err := d.Change(ins); err == nil {
		t.Error("relation survived Reset")
	}
}

// --- against a real walsender -----------------------------------------

// decStream reads pgoutput from a real replication connection and feeds
// every message to each decoder.
type decStream struct {
	t    *testing.T
	conn *pgconn.PgConn
	decs []*Decoder
	pos  pglogrepl.LSN
}

type decResult struct {
	c  Change
	ok bool
}

// decTxn is one transaction with changes: the raw messages and, per
// decoder, what it made of them.
type decTxn struct {
	begin  *pglogrepl.BeginMessage
	commit *pglogrepl.CommitMessage
	msgs   []pglogrepl.Message
	out    [][]decResult
}

func (h *decStream) receive() pglogrepl.Message {
	h.t.Helper()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		raw, err := h.conn.ReceiveMessage(ctx)
		cancel()
		if err != nil {
			h.t.Fatalf("receive from walsender: %v", err)
		}
		switch raw := raw.(type) {
		case *pgproto3.ErrorResponse:
			h.t.Fatalf("walsender error: %+v", raw)
		case *pgproto3.CopyData:
			switch raw.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(raw.Data[1:])
				if err != nil {
					h.t.Fatal(err)
				}
				if ka.ReplyRequested {
					err := pglogrepl.SendStandbyStatusUpdate(context.Background(), h.conn, pglogrepl.StandbyStatusUpdate{
						WALWritePosition: h.pos, WALFlushPosition: h.pos, WALApplyPosition: h.pos})
					if err != nil {
						h.t.Fatal(err)
					}
				}
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(raw.Data[1:])
				if err != nil {
					h.t.Fatal(err)
				}
				msg, err := pglogrepl.Parse(x.WALData)
				if err != nil {
					h.t.Fatal(err)
				}
				return msg
			}
		}
	}
}

// next returns the next transaction that has row changes.
func (h *decStream) next() *decTxn {
	h.t.Helper()
	tx := &decTxn{out: make([][]decResult, len(h.decs))}
	for {
		switch m := h.receive().(type) {
		case *pglogrepl.RelationMessage:
			for _, d := range h.decs {
				if err := d.Relation(context.Background(), m); err != nil {
					h.t.Fatalf("Relation: %v", err)
				}
			}
		case *pglogrepl.BeginMessage:
			tx.begin = m
			for _, d := range h.decs {
				d.Begin(m)
			}
		case *pglogrepl.InsertMessage, *pglogrepl.UpdateMessage, *pglogrepl.DeleteMessage:
			tx.msgs = append(tx.msgs, m)
			for i, d := range h.decs {
				c, ok, err := d.Change(m)
				if err != nil {
					h.t.Fatalf("decoder %d: Change: %v", i, err)
				}
				tx.out[i] = append(tx.out[i], decResult{c, ok})
			}
		case *pglogrepl.CommitMessage:
			h.pos = m.TransactionEndLSN
			if len(tx.msgs) > 0 {
				tx.commit = m
				return tx
			}
			tx = &decTxn{out: make([][]decResult, len(h.decs))}
		}
	}
}

// decObj builds a JSON object from name, raw-JSON pairs, dropping pairs
// whose value is "-".
func decObj(kv ...string) string {
	var b strings.Builder
	b.WriteByte('{')
	first := true
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == "-" {
			continue
		}
		if !first {
			b.WriteByte(',')
		}
		first = false
		fmt.Fprintf(&b, "%q:%s", kv[i], kv[i+1])
	}
	b.WriteByte('}')
	return b.String()
}

// decRow is a row of the integration table as name → raw JSON, in
// column order.
type decRow struct {
	cols []string
	vals map[string]string
}

// with returns a copy with some values replaced ("-" leaves one out).
func (r decRow) with(kv ...string) decRow {
	out := decRow{cols: r.cols, vals: make(map[string]string, len(r.vals))}
	for k, v := range r.vals {
		out.vals[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		out.vals[kv[i]] = kv[i+1]
	}
	return out
}

func (r decRow) json(cols ...string) string {
	if cols == nil {
		cols = r.cols
	}
	var kv []string
	for _, c := range cols {
		v, ok := r.vals[c]
		if !ok {
			v = "-"
		}
		kv = append(kv, c, v)
	}
	return decObj(kv...)
}

var decIDPattern = regexp.MustCompile(`^evt_[0-9A-F]{16}_[0-9]+$`)

// checkMeta checks what every result of a transaction must have.
func (tx *decTxn) checkMeta(t *testing.T) {
	t.Helper()
	if tx.begin.FinalLSN != tx.commit.CommitLSN {
		t.Errorf("begin final LSN %s != commit LSN %s", tx.begin.FinalLSN, tx.commit.CommitLSN)
	}
	for di, res := range tx.out {
		for pos, r := range res {
			if !r.ok {
				continue
			}
			c := r.c
			want := fmt.Sprintf("evt_%016X_%d", uint64(tx.begin.FinalLSN), pos)
			if c.ID != want || !decIDPattern.MatchString(c.ID) || strings.Contains(c.ID, ".") {
				t.Errorf("decoder %d change %d: id %q, want %q", di, pos, c.ID, want)
			}
			if c.Position != pos || c.CommitLSN != tx.begin.FinalLSN || !c.CommitTime.Equal(tx.begin.CommitTime) {
				t.Errorf("decoder %d change %d: position %d commit %s %v", di, pos, c.Position, c.CommitLSN, c.CommitTime)
			}
			wantOp := map[byte]Op{'I': OpInsert, 'U': OpUpdate, 'D': OpDelete}[byte(tx.msgs[pos].Type())]
			if c.Op != wantOp {
				t.Errorf("decoder %d change %d: op %v, want %v", di, pos, c.Op, wantOp)
			}
		}
	}
}

// decWant is what one decoder should make of one change; "" skips a
// check, "<nil>" wants nil.
type decWant struct {
	skip                    bool
	row, key, prev, group   string
	tenant                  string
	tenantNull, checkTenant bool
}

func (tx *decTxn) expect(t *testing.T, step string, dec, pos int, w decWant) {
	t.Helper()
	if len(tx.out[dec]) <= pos {
		t.Fatalf("%s: decoder %d has %d changes, want change %d", step, dec, len(tx.out[dec]), pos)
	}
	r := tx.out[dec][pos]
	what := fmt.Sprintf("%s: decoder %d change %d", step, dec, pos)
	if w.skip {
		if r.ok {
			t.Errorf("%s: not skipped: Row %s Previous %s", what, r.c.Row, r.c.Previous)
		}
		return
	}
	if !r.ok {
		t.Errorf("%s: skipped", what)
		return
	}
	if w.row != "" {
		decExpect(t, what+" Row", r.c.Row, w.row)
	}
	if w.key != "" {
		decExpect(t, what+" Key", r.c.Key, w.key)
	}
	if w.prev != "" {
		decExpect(t, what+" Previous", r.c.Previous, w.prev)
	}
	if w.group != "" && r.c.GroupKey != w.group {
		t.Errorf("%s: GroupKey %q, want %q", what, r.c.GroupKey, w.group)
	}
	if w.checkTenant && (r.c.Tenant != w.tenant || r.c.TenantNull != w.tenantNull) {
		t.Errorf("%s: tenant %q null %v, want %q null %v", what, r.c.Tenant, r.c.TenantNull, w.tenant, w.tenantNull)
	}
}

func decExec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

const decSchema = `
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN tagsdom AS text[];
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE TABLE groups (
	id bigint PRIMARY KEY,
	tenant text,
	name text,
	i2 smallint, i4 integer, i8 bigint,
	num numeric, flag boolean,
	vc varchar(20), bp char(5), nm name, ch "char",
	js json, jb jsonb,
	tags text[], grid integer[],
	ts timestamptz, d date, u uuid, b bytea,
	pos posint, mood mood, f8 double precision,
	posarr posint[], jbarr jsonb[], tsarr timestamptz[], tagsd tagsdom,
	big text
);
ALTER TABLE groups ALTER COLUMN big SET STORAGE EXTERNAL;
ALTER TABLE groups REPLICA IDENTITY FULL;
CREATE TABLE other (n integer, s text);
CREATE TABLE pairs (a integer, b text, c text, PRIMARY KEY (b, a));
ALTER TABLE pairs REPLICA IDENTITY FULL;
CREATE PUBLICATION decpub FOR TABLE groups, other, pairs;
`

const decInsertRow1 = `INSERT INTO groups VALUES (
	1, 'acme', E'Alpha <&> "q"\n',
	-32768, 2147483647, 9223372036854775807,
	123456789012345678901234567890.123456789, true,
	'v', 'ab', 'nm', 'x',
	'{"a" : [1, 2 ,3], "b":"<x>"}', '{"b": {"c": [1, 2.50, "x y"]}, "a": null}',
	'{"a b","c,d","e\"f","NULL",NULL,"g\\h"}', '[0:1][1:2]={{1,2},{3,4}}',
	'2024-01-02 03:04:05.123456+05:30', '2024-02-29', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x0a0b',
	42, 'happy', 1.5,
	'{1,2}', ARRAY['{"k": [1, 2]}'::jsonb, NULL], ARRAY['infinity'::timestamptz, '2024-01-02 03:04:05+00'], '{x,"y z"}',
	'short')`

// TestDecoderIntegration makes changes with plain SQL, reads them from a
// real walsender (pgoutput, protocol 1) and checks the exact bytes the
// decoder makes of them.
func TestDecoderIntegration(t *testing.T) {
	ctx := context.Background()
	dbURL := cluster.NewDatabase(t)
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	decExec(t, pool, decSchema)

	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	slot := "dec_" + strings.TrimPrefix(u.Path, "/")
	if len(slot) > 63 {
		slot = slot[:63]
	}
	decExec(t, pool, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)

	cfg, err := pgconn.ParseConfig(dbURL + "&replication=database")
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["DateStyle"] = "ISO"
	cfg.RuntimeParams["TimeZone"] = "UTC"
	cfg.RuntimeParams["bytea_output"] = "hex"
	cfg.RuntimeParams["extra_float_digits"] = "3"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close(context.Background())
		// The walsender lets go of the slot shortly after the close.
		for i := 0; ; i++ {
			_, err := pool.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", slot)
			if err == nil || i == 50 {
				if err != nil {
					t.Errorf("drop slot: %v", err)
				}
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'decpub'"}})
	if err != nil {
		t.Fatal(err)
	}

	var logs bytes.Buffer
	const (
		all      = iota // every column, tenant routing
		filtered        // a few fields, one missing, tenant not client-facing
		pairs           // composite key in another order than the columns
		nopk            // a table without a primary key
	)
	h := &decStream{t: t, conn: conn, decs: []*Decoder{
		all:      NewDecoder(DecoderConfig{Schema: "public", Table: "groups", TenantColumn: "tenant"}, pool),
		filtered: NewDecoder(DecoderConfig{Schema: "public", Table: "groups", Fields: []string{"name", "i4", "big", "nope"}, TenantColumn: "tenant", Logger: slog.New(slog.NewTextHandler(&logs, nil))}, pool),
		pairs:    NewDecoder(DecoderConfig{Table: "pairs"}, pool),
		nopk:     NewDecoder(DecoderConfig{Table: "other"}, pool),
	}}
	fcols := []string{"name", "i4", "big"}
	acme := decWant{checkTenant: true, tenant: "acme"}
	withTenant := func(w decWant, tw decWant) decWant {
		w.checkTenant, w.tenant, w.tenantNull = tw.checkTenant, tw.tenant, tw.tenantNull
		return w
	}

	row1 := decRow{
		cols: []string{"id", "tenant", "name", "i2", "i4", "i8", "num", "flag", "vc", "bp", "nm", "ch", "js", "jb", "tags", "grid",
			"ts", "d", "u", "b", "pos", "mood", "f8", "posarr", "jbarr", "tsarr", "tagsd", "big"},
		vals: map[string]string{
			"id": "1", "tenant": `"acme"`, "name": `"Alpha <&> \"q\"\n"`,
			"i2": "-32768", "i4": "2147483647", "i8": "9223372036854775807",
			"num": `"123456789012345678901234567890.123456789"`, "flag": "true",
			"vc": `"v"`, "bp": `"ab   "`, "nm": `"nm"`, "ch": `"x"`,
			"js": `{"a":[1,2,3],"b":"<x>"}`, "jb": `{"a":null,"b":{"c":[1,2.50,"x y"]}}`,
			"tags": `["a b","c,d","e\"f","NULL",null,"g\\h"]`, "grid": `[[1,2],[3,4]]`,
			"ts": `"2024-01-01T21:34:05.123456Z"`, "d": `"2024-02-29"`, "u": `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`, "b": `"Cgs="`,
			"pos": "42", "mood": `"happy"`, "f8": `"1.5"`,
			"posarr": "[1,2]", "jbarr": `[{"k":[1,2]},null]`, "tsarr": `["infinity","2024-01-02T03:04:05Z"]`, "tagsd": `["x","y z"]`,
			"big": `"short"`,
		},
	}
	nulls := row1.with()
	for _, c := range nulls.cols {
		nulls.vals[c] = "null"
	}

	// 1. Insert of every type.
	decExec(t, pool, decInsertRow1)
	tx := h.next()
	tx.checkMeta(t)
	tx.expect(t, "insert", all, 0, withTenant(decWant{row: row1.json(), key: `{"id":1}`, prev: "<nil>", group: "1:1"}, acme))
	tx.expect(t, "insert", filtered, 0, withTenant(decWant{row: row1.json(fcols...), key: `{}`, prev: "<nil>", group: "1:1"}, acme))
	tx.expect(t, "insert", pairs, 0, decWant{skip: true})
	tx.expect(t, "insert", nopk, 0, decWant{skip: true})
	if got := tx.out[all][0].c.Table; got != "public.groups" {
		t.Errorf("Table %q", got)
	}

	// 2. Insert of NULLs.
	decExec(t, pool, `INSERT INTO groups (id) VALUES (2)`)
	row2 := nulls.with("id", "2")
	tx = h.next()
	tx.checkMeta(t)
	tx.expect(t, "insert nulls", all, 0, decWant{row: row2.json(), key: `{"id":2}`, group: "1:2", checkTenant: true, tenantNull: true})
	tx.expect(t, "insert nulls", filtered, 0, decWant{row: `{"name":null,"i4":null,"big":null}`})

	// 3. One transaction: a no-op update, an update of a column only
	// "all" sees, a change of another table, an update both see.
	decExec(t, pool, `BEGIN;
		UPDATE groups SET name = name WHERE id = 1;
		UPDATE groups SET i2 = 7 WHERE id = 1;
		INSERT INTO other VALUES (1, 'o');
		UPDATE groups SET name = 'Beta' WHERE id = 1;
		COMMIT`)
	tx = h.next()
	tx.checkMeta(t)
	if len(tx.msgs) != 4 {
		t.Fatalf("transaction 3 has %d changes, want 4", len(tx.msgs))
	}
	row1 = row1.with("i2", "7")
	tx.expect(t, "no-op update", all, 0, decWant{skip: true})
	tx.expect(t, "no-op update", filtered, 0, decWant{skip: true})
	tx.expect(t, "i2 update", all, 1, withTenant(decWant{row: row1.json(), prev: `{"i2":-32768}`, key: `{"id":1}`}, acme))
	tx.expect(t, "i2 update", filtered, 1, decWant{skip: true})
	tx.expect(t, "other table", all, 2, decWant{skip: true})
	tx.expect(t, "other table", nopk, 2, decWant{row: `{"n":1,"s":"o"}`, key: `{}`, group: "", checkTenant: true, tenantNull: true})
	if g := tx.out[nopk][2].c.GroupKey; g != "" {
		t.Errorf("group key without primary key: %q", g)
	}
	oldName := row1.vals["name"]
	row1 = row1.with("name", `"Beta"`)
	tx.expect(t, "name update", all, 3, decWant{row: row1.json(), prev: `{"name":` + oldName + `}`})
	tx.expect(t, "name update", filtered, 3, decWant{row: row1.json(fcols...), prev: `{"name":` + oldName + `}`, key: `{}`})

	// 4. A TOASTed value (stored out of line, over 8 KB).
	var sb strings.Builder
	for i := 0; sb.Len() < 10_000; i++ {
		fmt.Fprintf(&sb, "chunk %04d <&> ", i)
	}
	big := sb.String()
	bigJSON := `"` + big + `"`
	decExec(t, pool, `UPDATE groups SET big = $1 WHERE id = 1`, big)
	tx = h.next()
	row1 = row1.with("big", bigJSON)
	tx.expect(t, "toast write", all, 0, decWant{row: row1.json(), prev: `{"big":"short"}`})
	tx.expect(t, "toast write", filtered, 0, decWant{row: row1.json(fcols...), prev: `{"big":"short"}`})

	bigIdx := len(row1.cols) - 1
	toastOf := func(m pglogrepl.Message) uint8 {
		return m.(*pglogrepl.UpdateMessage).NewTuple.Columns[bigIdx].DataType
	}

	// 5. FULL: an update of another column; the TOAST value comes from the
	// old tuple.
	decExec(t, pool, `UPDATE groups SET name = 'Gamma' WHERE id = 1`)
	tx = h.next()
	tx.checkMeta(t)
	if dt := toastOf(tx.msgs[0]); dt != 'u' {
		t.Fatalf("test set-up: big is %q in the new tuple, want 'u'", dt)
	}
	row1 = row1.with("name", `"Gamma"`)
	tx.expect(t, "toast FULL", all, 0, decWant{row: row1.json(), prev: `{"name":"Beta"}`})
	tx.expect(t, "toast FULL", filtered, 0, decWant{row: row1.json(fcols...), prev: `{"name":"Beta"}`})

	// 6. DEFAULT: no old tuple; the TOAST value is left out, not null;
	// every update is sent, also one that changed nothing.
	decExec(t, pool, `ALTER TABLE groups REPLICA IDENTITY DEFAULT`)
	decExec(t, pool, `UPDATE groups SET name = 'Delta' WHERE id = 1`)
	tx = h.next()
	tx.checkMeta(t)
	if m := tx.msgs[0].(*pglogrepl.UpdateMessage); m.OldTuple != nil || toastOf(m) != 'u' {
		t.Fatalf("test set-up: old tuple %v, big %q", m.OldTuple, toastOf(m))
	}
	row1 = row1.with("name", `"Delta"`)
	tx.expect(t, "toast DEFAULT", all, 0, decWant{row: row1.with("big", "-").json(), prev: "<nil>"})
	tx.expect(t, "toast DEFAULT", filtered, 0, decWant{row: `{"name":"Delta","i4":2147483647}`, prev: "<nil>"})
	decExec(t, pool, `UPDATE groups SET name = 'Delta' WHERE id = 1`)
	tx = h.next()
	tx.expect(t, "no-op DEFAULT", all, 0, decWant{row: row1.with("big", "-").json(), prev: "<nil>"})
	tx.expect(t, "no-op DEFAULT", filtered, 0, decWant{row: `{"name":"Delta","i4":2147483647}`, prev: "<nil>"})

	// 7. DEFAULT delete: only the key is known; the tenant is unknown.
	decExec(t, pool, `DELETE FROM groups WHERE id = 2`)
	tx = h.next()
	tx.checkMeta(t)
	tx.expect(t, "delete DEFAULT", all, 0, decWant{row: `{"id":2}`, key: `{"id":2}`, group: "1:2", prev: "<nil>", checkTenant: true, tenantNull: true})
	tx.expect(t, "delete DEFAULT", filtered, 0, decWant{row: `{}`, key: `{}`, group: "1:2", checkTenant: true, tenantNull: true})

	// 8. DEFAULT key change: the old key is known, nothing else.
	decExec(t, pool, `UPDATE groups SET id = 3 WHERE id = 1`)
	tx = h.next()
	row3 := row1.with("id", "3")
	tx.expect(t, "key change", all, 0, withTenant(decWant{row: row3.with("big", "-").json(), key: `{"id":3}`, prev: `{"id":1}`, group: "1:3"}, acme))
	tx.expect(t, "key change", filtered, 0, decWant{row: `{"name":"Delta","i4":2147483647}`, prev: "<nil>", group: "1:3"})

	// 9. Schema change mid-stream: a new column arrives with a new
	// Relation message.
	decExec(t, pool, `ALTER TABLE groups REPLICA IDENTITY FULL`)
	decExec(t, pool, `ALTER TABLE groups ADD COLUMN extra integer DEFAULT 7`)
	decExec(t, pool, `INSERT INTO groups (id, tenant, name) VALUES (4, 'acme', 'Epsilon')`)
	tx = h.next()
	tx.checkMeta(t)
	withExtra := func(r decRow) decRow {
		r.cols = append(append([]string(nil), r.cols...), "extra")
		return r.with("extra", "7")
	}
	row4 := withExtra(nulls.with("id", "4", "tenant", `"acme"`, "name", `"Epsilon"`))
	tx.expect(t, "add column", all, 0, withTenant(decWant{row: row4.json()}, acme))
	tx.expect(t, "add column", filtered, 0, decWant{row: `{"name":"Epsilon","i4":null,"big":null}`})

	// 10. FULL delete: the whole old row, TOAST value included.
	decExec(t, pool, `DELETE FROM groups WHERE id = 3`)
	tx = h.next()
	tx.checkMeta(t)
	tx.expect(t, "delete FULL", all, 0, withTenant(decWant{row: withExtra(row3).json(), key: `{"id":3}`, prev: "<nil>", group: "1:3"}, acme))
	tx.expect(t, "delete FULL", filtered, 0, decWant{row: withExtra(row3).json(fcols...)})

	// 11. Composite key in key order, not column order, and not the
	// replica identity flags (all columns under FULL).
	decExec(t, pool, `INSERT INTO pairs VALUES (1, 'x', 'y')`)
	decExec(t, pool, `UPDATE pairs SET c = 'z'`)
	tx = h.next()
	tx.expect(t, "pairs insert", pairs, 0, decWant{row: `{"a":1,"b":"x","c":"y"}`, key: `{"b":"x","a":1}`, group: "1:x1:1"})
	tx.expect(t, "pairs insert", all, 0, decWant{skip: true})
	tx = h.next()
	tx.expect(t, "pairs update", pairs, 0, decWant{row: `{"a":1,"b":"x","c":"z"}`, key: `{"b":"x","a":1}`, prev: `{"c":"y"}`})

	if n := strings.Count(logs.String(), "field=nope"); n != 1 {
		t.Errorf("missing field logged %d times, want 1:\n%s", n, logs.String())
	}
}

// --- benchmarks -------------------------------------------------------

// benchDecoder is a decoder with a realistic 10-column groups relation.
func benchDecoder(b *testing.B) (*Decoder, *pglogrepl.InsertMessage) {
	d := NewDecoder(DecoderConfig{Table: "groups", TenantColumn: "client_id"}, nil)
	decInstall(d, decRelation(100, "public", "groups",
		decCol{"id", pgtype.Int8OID, true},
		decCol{"client_id", pgtype.TextOID, true},
		decCol{"name", pgtype.TextOID, true},
		decCol{"description", pgtype.TextOID, true},
		decCol{"member_count", pgtype.Int4OID, true},
		decCol{"post_count", pgtype.Int4OID, true},
		decCol{"tags", pgtype.TextArrayOID, true},
		decCol{"settings", pgtype.JSONBOID, true},
		decCol{"created_at", pgtype.TimestamptzOID, true},
		decCol{"updated_at", pgtype.TimestamptzOID, true},
	), "id")
	decBegin(d, 0x16B3A28)
	ins := &pglogrepl.InsertMessage{RelationID: 100, Tuple: decTuple(
		"1234567",
		"client-42",
		"Weekend hikers",
		`People who like to walk up hills on Saturdays and talk about "gear".`,
		"318",
		"12045",
		`{hiking,outdoors,"trail running",alps}`,
		`{"theme": "dark", "notify": {"email": true, "push": false}, "limits": [10, 20, 30]}`,
		"2024-01-02 03:04:05.123456+00",
		"2025-06-07 08:09:10.5+00",
	)}
	return d, ins
}

func BenchmarkDecoderInsert(b *testing.B) {
	d, ins := benchDecoder(b)
	b.ReportAllocs()
	for b.Loop() {
		if d.pos > 1<<20 {
			d.pos = 0
		}
		if _, ok, err := d.Change(ins); err != nil || !ok {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecoderUpdateFull(b *testing.B) {
	d, ins := benchDecoder(b)
	newT := decTuple("1234567", "client-42", "Weekend hikers", "changed", "319", "12045",
		`{hiking,outdoors,"trail running",alps}`, nil, "2024-01-02 03:04:05.123456+00", "2025-06-07 08:09:11+00")
	newT.Columns[7].DataType = pglogrepl.TupleDataTypeToast
	upd := &pglogrepl.UpdateMessage{RelationID: 100, OldTupleType: pglogrepl.UpdateMessageTupleTypeOld, OldTuple: ins.Tuple, NewTuple: newT}
	b.ReportAllocs()
	for b.Loop() {
		if _, ok, err := d.Change(upd); err != nil || !ok {
			b.Fatal(err)
		}
	}
}
