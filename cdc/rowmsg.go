package cdc

import (
	"encoding/binary"
	"fmt"

	"github.com/jackc/pglogrepl"
)

// rowParser decodes the pgoutput row messages (Insert, Update, Delete; the
// protocol v1 layout) into messages it reuses, whose column data alias the
// received bytes. pglogrepl.Parse allocates every column and copies its
// value: two dozen allocations per row, about a sixth of the daemon's
// garbage. A parsed message is valid until the next parse and the
// connection's next read; the Decoder copies what it keeps.
type rowParser struct {
	ins    pglogrepl.InsertMessage
	upd    pglogrepl.UpdateMessage
	del    pglogrepl.DeleteMessage
	tuples [2]tupleBuf // old, new
}

// tupleBuf is a reused TupleData with its columns.
type tupleBuf struct {
	td   pglogrepl.TupleData
	cols []pglogrepl.TupleDataColumn
}

// parse decodes data when it is a row message; ok is false for every other
// message type, which pglogrepl.Parse handles.
func (p *rowParser) parse(data []byte) (msg pglogrepl.Message, ok bool, err error) {
	if len(data) == 0 {
		return nil, false, nil
	}
	typ := pglogrepl.MessageType(data[0])
	src := data[1:]
	switch typ {
	case pglogrepl.MessageTypeInsert, pglogrepl.MessageTypeUpdate, pglogrepl.MessageTypeDelete:
	default:
		return nil, false, nil
	}
	if len(src) < 5 {
		return nil, true, fmt.Errorf("%s message of %d bytes is too short", typ, len(src))
	}
	rel := binary.BigEndian.Uint32(src)
	kind, rest := src[4], src[5:]
	switch typ {
	case pglogrepl.MessageTypeInsert:
		if kind != 'N' {
			return nil, true, fmt.Errorf("insert: tuple type %q, want 'N'", kind)
		}
		t, _, err := p.tuples[1].decode(rest)
		if err != nil {
			return nil, true, fmt.Errorf("insert: new tuple: %w", err)
		}
		p.ins = pglogrepl.InsertMessage{RelationID: rel, Tuple: t}
		p.ins.SetType(typ)
		return &p.ins, true, nil
	case pglogrepl.MessageTypeUpdate:
		p.upd = pglogrepl.UpdateMessage{RelationID: rel}
		if kind == pglogrepl.UpdateMessageTupleTypeKey || kind == pglogrepl.UpdateMessageTupleTypeOld {
			t, n, err := p.tuples[0].decode(rest)
			if err != nil {
				return nil, true, fmt.Errorf("update: old tuple: %w", err)
			}
			p.upd.OldTupleType, p.upd.OldTuple = kind, t
			if len(rest) <= n {
				return nil, true, fmt.Errorf("update: no new tuple after the old one")
			}
			kind, rest = rest[n], rest[n+1:]
		}
		if kind != pglogrepl.UpdateMessageTupleTypeNew {
			return nil, true, fmt.Errorf("update: tuple type %q, want 'K', 'O' or 'N'", kind)
		}
		t, _, err := p.tuples[1].decode(rest)
		if err != nil {
			return nil, true, fmt.Errorf("update: new tuple: %w", err)
		}
		p.upd.NewTuple = t
		p.upd.SetType(typ)
		return &p.upd, true, nil
	default: // delete
		if kind != pglogrepl.DeleteMessageTupleTypeKey && kind != pglogrepl.DeleteMessageTupleTypeOld {
			return nil, true, fmt.Errorf("delete: tuple type %q, want 'K' or 'O'", kind)
		}
		t, _, err := p.tuples[0].decode(rest)
		if err != nil {
			return nil, true, fmt.Errorf("delete: old tuple: %w", err)
		}
		p.del = pglogrepl.DeleteMessage{RelationID: rel, OldTupleType: kind, OldTuple: t}
		p.del.SetType(typ)
		return &p.del, true, nil
	}
}

// decode reads one TupleData from src into b and returns it with the
// number of bytes it took. Column data alias src.
func (b *tupleBuf) decode(src []byte) (*pglogrepl.TupleData, int, error) {
	if len(src) < 2 {
		return nil, 0, fmt.Errorf("tuple of %d bytes has no column count", len(src))
	}
	n := int(binary.BigEndian.Uint16(src))
	if cap(b.cols) < n {
		b.cols = make([]pglogrepl.TupleDataColumn, n)
		b.td.Columns = make([]*pglogrepl.TupleDataColumn, n)
		for i := range b.cols {
			b.td.Columns[i] = &b.cols[i]
		}
	}
	b.td.ColumnNum = uint16(n)
	b.td.Columns = b.td.Columns[:n]
	pos := 2
	for i := range n {
		if pos >= len(src) {
			return nil, 0, fmt.Errorf("tuple ends before column %d of %d", i+1, n)
		}
		c := &b.cols[i]
		*c = pglogrepl.TupleDataColumn{DataType: src[pos]}
		pos++
		switch c.DataType {
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			if len(src)-pos < 4 {
				return nil, 0, fmt.Errorf("column %d of %d: value length cut off", i+1, n)
			}
			c.Length = binary.BigEndian.Uint32(src[pos:])
			pos += 4
			if uint64(len(src)-pos) < uint64(c.Length) {
				return nil, 0, fmt.Errorf("column %d of %d: value of %d bytes cut off", i+1, n, c.Length)
			}
			end := pos + int(c.Length)
			c.Data = src[pos:end:end]
			pos = end
		}
	}
	return &b.td, pos, nil
}
