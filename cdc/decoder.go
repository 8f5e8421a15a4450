package cdc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// DecoderConfig says which table to decode and what of it clients may see.
type DecoderConfig struct {
	// Schema and Table name the watched table.
	Schema, Table string
	// Fields are the client-facing columns; empty means every column.
	Fields []string
	// TenantColumn names the column that routes events to clients; empty
	// means no tenant routing.
	TenantColumn string
	// Logger receives warnings, each logged once per Decoder: a configured
	// field or tenant column, or a primary-key column, that a Relation
	// message lacks. nil discards them.
	Logger *slog.Logger
}

// Decoder turns pgoutput messages of one connection into Changes. It caches
// Relation messages (each one an upsert) and looks up, when a relation
// arrives, the primary key and the types it does not know in the catalog.
// It is not safe for concurrent use; the stream loop owns it.
type Decoder struct {
	cfg     DecoderConfig
	catalog *pgxpool.Pool
	log     *slog.Logger
	warned  map[string]bool

	rels map[uint32]*relInfo
	last *relInfo // the relation of the previous change, to skip the map

	began      bool
	commitLSN  pglogrepl.LSN
	commitTime time.Time
	pos        int
	idPrefix   []byte // "evt_<commit LSN>_"

	// Scratch space reused by every Change.
	newVals, oldVals []colValue
	buf              []byte // Row, Key and Previous
	strBuf           []byte // ID, GroupKey and Tenant
}

// relInfo is the cached plan for one relation id.
type relInfo struct {
	id      uint32
	table   string // "schema.table"
	watched bool
	cols    []relColumn
	fields  []int // client-facing columns, in table order
	key     []int // primary-key columns, in key order
	keyOut  []int // primary-key columns that are client-facing, in key order
	tenant  int   // index of the tenant column, -1 when none
}

type relColumn struct {
	name     string
	ident    bool // part of the replica identity (pgoutput flag 1)
	enc      encodeFunc
	jsonName []byte // `"name":`
}

// colValue is one column of a decoded tuple.
type colValue struct {
	state uint8 // valUnknown, valNull or valText
	data  []byte
}

const (
	valUnknown uint8 = iota // unchanged TOAST, or not in the replica identity
	valNull
	valText
)

var errNoTransaction = errors.New("change outside a transaction (no Begin since Reset)")

// maxScratch bounds the scratch buffer a Decoder keeps between changes.
const maxScratch = 1 << 20

// NewDecoder returns a decoder; catalog is used only when a Relation
// message arrives, never per row.
func NewDecoder(cfg DecoderConfig, catalog *pgxpool.Pool) *Decoder {
	if cfg.Schema == "" {
		cfg.Schema = "public"
	}
	cfg.Fields = append([]string(nil), cfg.Fields...)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Decoder{
		cfg:     cfg,
		catalog: catalog,
		log:     log,
		warned:  make(map[string]bool),
		rels:    make(map[uint32]*relInfo),
	}
}

// Reset forgets cached relations; call it on every new connection, because
// relation ids are announced again per connection.
func (d *Decoder) Reset() {
	clear(d.rels)
	d.last = nil
	d.began = false
	d.pos = 0
}

// Relation records or replaces a relation.
func (d *Decoder) Relation(ctx context.Context, m *pglogrepl.RelationMessage) error {
	if d.last != nil && d.last.id == m.RelationID {
		d.last = nil
	}
	if m.Namespace != d.cfg.Schema || m.RelationName != d.cfg.Table {
		d.rels[m.RelationID] = &relInfo{id: m.RelationID, table: m.Namespace + "." + m.RelationName, tenant: -1}
		return nil
	}
	// A stale plan must not outlive a failed refresh.
	delete(d.rels, m.RelationID)
	pk, types, err := d.lookupCatalog(ctx, m)
	if err != nil {
		return fmt.Errorf("catalog lookup for relation oid %d: %w", m.RelationID, err)
	}
	d.rels[m.RelationID] = d.plan(m, pk, types)
	return nil
}

// Begin starts a transaction: positions count from 0 again and ids derive
// from m.FinalLSN; CommitTime is taken from it.
func (d *Decoder) Begin(m *pglogrepl.BeginMessage) {
	d.began = true
	d.commitLSN = m.FinalLSN
	d.commitTime = m.CommitTime
	d.pos = 0
	d.idPrefix = appendEventIDPrefix(d.idPrefix[:0], m.FinalLSN)
}

// appendEventIDPrefix appends "evt_%016X_".
func appendEventIDPrefix(dst []byte, lsn pglogrepl.LSN) []byte {
	const upperHex = "0123456789ABCDEF"
	dst = append(dst, "evt_"...)
	for shift := 60; shift >= 0; shift -= 4 {
		dst = append(dst, upperHex[(uint64(lsn)>>shift)&0xF])
	}
	return append(dst, '_')
}

// Change decodes an *InsertMessage, *UpdateMessage or *DeleteMessage. Every
// call advances the position in the transaction, also when ok is false (a
// change to another table, or an update that changed no client-facing
// column). An unknown relation id is an error.
func (d *Decoder) Change(m pglogrepl.Message) (c Change, ok bool, err error) {
	var (
		relID     uint32
		op        Op
		newT      *pglogrepl.TupleData
		oldT      *pglogrepl.TupleData
		oldIsKeys bool
	)
	switch m := m.(type) {
	case *pglogrepl.InsertMessage:
		relID, op, newT = m.RelationID, OpInsert, m.Tuple
	case *pglogrepl.UpdateMessage:
		relID, op, newT = m.RelationID, OpUpdate, m.NewTuple
		oldT, oldIsKeys = m.OldTuple, m.OldTupleType == pglogrepl.UpdateMessageTupleTypeKey
	case *pglogrepl.DeleteMessage:
		relID, op = m.RelationID, OpDelete
		oldT, oldIsKeys = m.OldTuple, m.OldTupleType == pglogrepl.DeleteMessageTupleTypeKey
	default:
		return Change{}, false, fmt.Errorf("%T is not an insert, update or delete", m)
	}
	pos := d.pos
	d.pos++
	if !d.began {
		return Change{}, false, errNoTransaction
	}
	rel := d.last
	if rel == nil || rel.id != relID {
		rel = d.rels[relID]
		if rel == nil {
			return Change{}, false, fmt.Errorf("unknown relation id %d (no Relation message on this connection)", relID)
		}
		d.last = rel
	}
	if !rel.watched {
		return Change{}, false, nil
	}

	n := len(rel.cols)
	if cap(d.newVals) < n {
		d.newVals = make([]colValue, n)
		d.oldVals = make([]colValue, n)
	}
	vals, old := d.newVals[:n], d.oldVals[:n]
	hasOld := oldT != nil
	if hasOld {
		if err := rel.load(old, oldT, oldIsKeys); err != nil {
			return Change{}, false, fmt.Errorf("%s of %s: old tuple: %w", op, rel.table, err)
		}
	}
	switch op {
	case OpDelete:
		if !hasOld {
			return Change{}, false, fmt.Errorf("DELETE of %s: no old tuple", rel.table)
		}
		vals = old
	default:
		if newT == nil {
			return Change{}, false, fmt.Errorf("%s of %s: no new tuple", op, rel.table)
		}
		if err := rel.load(vals, newT, false); err != nil {
			return Change{}, false, fmt.Errorf("%s of %s: new tuple: %w", op, rel.table, err)
		}
		if hasOld {
			// An unchanged TOASTed value is the old one, when that is known.
			for i := range vals {
				if vals[i].state == valUnknown {
					vals[i] = old[i]
				}
			}
		}
	}

	buf := d.buf[:0]
	buf = rel.appendObject(buf, rel.fields, vals)
	rowEnd := len(buf)
	buf = rel.appendObject(buf, rel.keyOut, vals)
	keyEnd := len(buf)
	prevEnd := -1
	if op == OpUpdate && hasOld {
		var changed, complete bool
		buf, changed, complete = rel.appendPrevious(buf, old, vals)
		switch {
		case changed:
			prevEnd = len(buf)
		case complete:
			d.buf = buf
			return Change{}, false, nil // no client-facing column changed
		default:
			buf = buf[:keyEnd] // old row not known well enough to tell
		}
	}
	out := make([]byte, len(buf))
	copy(out, buf)
	if cap(buf) > maxScratch {
		buf = nil // do not hold on to the memory of one huge row
	}
	d.buf = buf
	c.Row = out[:rowEnd:rowEnd]
	c.Key = out[rowEnd:keyEnd:keyEnd]
	if prevEnd >= 0 {
		c.Previous = out[keyEnd:prevEnd:prevEnd]
	}

	s := append(d.strBuf[:0], d.idPrefix...)
	s = strconv.AppendInt(s, int64(pos), 10)
	idEnd := len(s)
	s = rel.appendGroupKey(s, vals)
	groupEnd := len(s)
	c.TenantNull = true
	if rel.tenant >= 0 && vals[rel.tenant].state == valText {
		s = append(s, vals[rel.tenant].data...)
		c.TenantNull = false
	}
	d.strBuf = s
	str := string(s)
	c.ID = str[:idEnd]
	c.GroupKey = str[idEnd:groupEnd]
	c.Tenant = str[groupEnd:]

	c.Op = op
	c.Table = rel.table
	c.CommitLSN = d.commitLSN
	c.Position = pos
	c.CommitTime = d.commitTime
	return c, true, nil
}

// load reads a tuple into vals. In an old tuple of replica-identity columns
// only (keys), 'n' for a column outside the identity means "not sent", not
// NULL.
func (r *relInfo) load(vals []colValue, t *pglogrepl.TupleData, keys bool) error {
	if len(t.Columns) != len(r.cols) {
		return fmt.Errorf("tuple has %d columns, the relation %d", len(t.Columns), len(r.cols))
	}
	for i, col := range t.Columns {
		switch col.DataType {
		case pglogrepl.TupleDataTypeText:
			vals[i] = colValue{state: valText, data: col.Data}
		case pglogrepl.TupleDataTypeNull:
			if keys && !r.cols[i].ident {
				vals[i] = colValue{state: valUnknown}
			} else {
				vals[i] = colValue{state: valNull}
			}
		case pglogrepl.TupleDataTypeToast:
			vals[i] = colValue{state: valUnknown}
		default:
			return fmt.Errorf("column %s: tuple data type %q is not supported (binary mode is never requested)", r.cols[i].name, col.DataType)
		}
	}
	return nil
}

// appendObject appends a JSON object of the columns idx of vals; unknown
// values are left out.
func (r *relInfo) appendObject(dst []byte, idx []int, vals []colValue) []byte {
	dst = append(dst, '{')
	first := true
	for _, i := range idx {
		v := vals[i]
		if v.state == valUnknown {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = r.cols[i].appendValue(dst, v)
	}
	return append(dst, '}')
}

// appendValue appends `"name":value`.
func (c *relColumn) appendValue(dst []byte, v colValue) []byte {
	dst = append(dst, c.jsonName...)
	if v.state == valNull {
		return append(dst, "null"...)
	}
	return c.enc(dst, v.data)
}

// appendPrevious appends a JSON object of the old values of the
// client-facing columns that changed. complete is false when some old
// value is unknown, so that "nothing changed" cannot be concluded.
func (r *relInfo) appendPrevious(dst []byte, old, vals []colValue) (_ []byte, changed, complete bool) {
	dst = append(dst, '{')
	complete = true
	for _, i := range r.fields {
		o, v := old[i], vals[i]
		if o.state == valUnknown {
			complete = false
			continue
		}
		if o.state == v.state && (o.state != valText || bytes.Equal(o.data, v.data)) {
			continue
		}
		if changed {
			dst = append(dst, ',')
		}
		changed = true
		dst = r.cols[i].appendValue(dst, o)
	}
	return append(dst, '}'), changed, complete
}

// appendGroupKey appends the primary-key values so that no two keys give
// the same string: each value as "<byte length>:<text>", 'n' for NULL and
// 'u' for unknown.
func (r *relInfo) appendGroupKey(dst []byte, vals []colValue) []byte {
	for _, i := range r.key {
		switch v := vals[i]; v.state {
		case valText:
			dst = strconv.AppendInt(dst, int64(len(v.data)), 10)
			dst = append(dst, ':')
			dst = append(dst, v.data...)
		case valNull:
			dst = append(dst, 'n')
		default:
			dst = append(dst, 'u')
		}
	}
	return dst
}

// plan builds the per-relation column plan of the watched table. pk names
// the primary-key columns in key order; types holds encoders for the
// non-built-in type OIDs (missing ones are sent as text).
func (d *Decoder) plan(m *pglogrepl.RelationMessage, pk []string, types map[uint32]encodeFunc) *relInfo {
	rel := &relInfo{
		id:      m.RelationID,
		table:   m.Namespace + "." + m.RelationName,
		watched: true,
		cols:    make([]relColumn, len(m.Columns)),
		tenant:  -1,
	}
	byName := make(map[string]int, len(m.Columns))
	for i, col := range m.Columns {
		enc, ok := builtinEncoder(col.DataType)
		if !ok {
			if enc = types[col.DataType]; enc == nil {
				enc = encodeText
			}
		}
		name := appendJSONString(nil, []byte(col.Name))
		rel.cols[i] = relColumn{
			name:     col.Name,
			ident:    col.Flags&1 != 0,
			enc:      enc,
			jsonName: append(name, ':'),
		}
		byName[col.Name] = i
	}

	facing := make([]bool, len(m.Columns))
	if len(d.cfg.Fields) == 0 {
		for i := range facing {
			facing[i] = true
		}
	} else {
		for _, f := range d.cfg.Fields {
			i, ok := byName[f]
			if !ok {
				d.warnOnce("field:"+f, "configured field is not a column of the table; leaving it out", "field", f, "table", rel.table)
				continue
			}
			facing[i] = true
		}
	}
	for i, f := range facing {
		if f {
			rel.fields = append(rel.fields, i)
		}
	}
	for _, name := range pk {
		i, ok := byName[name]
		if !ok {
			d.warnOnce("pk:"+name, "primary-key column is not in the replicated columns; groups are keyed without it", "column", name, "table", rel.table)
			continue
		}
		rel.key = append(rel.key, i)
		if facing[i] {
			rel.keyOut = append(rel.keyOut, i)
		}
	}
	if d.cfg.TenantColumn != "" {
		if i, ok := byName[d.cfg.TenantColumn]; ok {
			rel.tenant = i
		} else {
			d.warnOnce("tenant:"+d.cfg.TenantColumn, "tenant column is not a column of the table; events carry no tenant", "column", d.cfg.TenantColumn, "table", rel.table)
		}
	}
	return rel
}

func (d *Decoder) warnOnce(key, msg string, args ...any) {
	if d.warned[key] {
		return
	}
	d.warned[key] = true
	d.log.Warn(msg, args...)
}

// The primary key in key order, from pg_index (not from the relation's
// column flags, which mark the replica identity: every column under
// REPLICA IDENTITY FULL).
const pkQuery = `SELECT a.attname::text
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = $1::oid AND i.indisprimary
ORDER BY k.ord`

// What an unknown type is: a domain (typtype d, over typbasetype), an
// array (typcategory A, of typelem, split by the element's typdelim), or
// anything else (sent as text: enums, ranges, composites, extensions).
const typeQuery = `SELECT t.oid, t.typtype::text, t.typbasetype, t.typelem, t.typcategory::text, COALESCE(e.typdelim::text, ',')
FROM pg_type t LEFT JOIN pg_type e ON e.oid = t.typelem
WHERE t.oid = ANY($1::oid[])`

type pgTypeRow struct {
	typtype, category byte
	base, elem        uint32
	delim             byte
}

// maxTypeRounds bounds the catalog round trips for chains such as a
// domain over an array of a domain.
const maxTypeRounds = 8

// lookupCatalog finds the primary key of the relation and encoders for
// its column types that are not built in. Without a catalog (tests) there
// is no key and unknown types are text.
func (d *Decoder) lookupCatalog(ctx context.Context, m *pglogrepl.RelationMessage) ([]string, map[uint32]encodeFunc, error) {
	if d.catalog == nil {
		return nil, nil, nil
	}
	rows, err := d.catalog.Query(ctx, pkQuery, m.RelationID)
	if err != nil {
		return nil, nil, fmt.Errorf("primary key: %w", err)
	}
	pk, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, fmt.Errorf("primary key: %w", err)
	}

	found := make(map[uint32]pgTypeRow)
	seen := make(map[uint32]bool)
	var pending []uint32
	want := func(oid uint32) {
		if _, ok := builtinEncoder(oid); ok || oid == 0 || seen[oid] {
			return
		}
		seen[oid] = true
		pending = append(pending, oid)
	}
	for _, col := range m.Columns {
		want(col.DataType)
	}
	for round := 0; len(pending) > 0 && round < maxTypeRounds; round++ {
		batch := pending
		pending = nil
		rows, err := d.catalog.Query(ctx, typeQuery, batch)
		if err != nil {
			return nil, nil, fmt.Errorf("types: %w", err)
		}
		var (
			oid, base, elem            uint32
			typtype, category, delimit string
		)
		_, err = pgx.ForEachRow(rows, []any{&oid, &typtype, &base, &elem, &category, &delimit}, func() error {
			row := pgTypeRow{base: base, elem: elem, delim: ','}
			if len(typtype) == 1 {
				row.typtype = typtype[0]
			}
			if len(category) == 1 {
				row.category = category[0]
			}
			if len(delimit) == 1 {
				row.delim = delimit[0]
			}
			found[oid] = row
			if row.typtype == 'd' {
				want(row.base)
			} else if row.category == 'A' && row.elem != 0 {
				want(row.elem)
			}
			return nil
		})
		if err != nil {
			return nil, nil, fmt.Errorf("types: %w", err)
		}
	}
	types := make(map[uint32]encodeFunc)
	for _, col := range m.Columns {
		if _, ok := builtinEncoder(col.DataType); !ok {
			types[col.DataType] = resolveEncoder(col.DataType, found, 0)
		}
	}
	return pk, types, nil
}

// resolveEncoder follows domains to their base type and arrays to their
// element type.
func resolveEncoder(oid uint32, found map[uint32]pgTypeRow, depth int) encodeFunc {
	if enc, ok := builtinEncoder(oid); ok {
		return enc
	}
	row, ok := found[oid]
	if !ok || depth > maxTypeRounds {
		return encodeText
	}
	switch {
	case row.typtype == 'd':
		return resolveEncoder(row.base, found, depth+1)
	case row.category == 'A' && row.elem != 0:
		return encodeArrayOf(resolveEncoder(row.elem, found, depth+1), row.delim)
	}
	return encodeText
}
