package cdc

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/jackc/pglogrepl"
)

// tcol is a column of a test tuple: kind 't', 'b', 'n' or 'u'.
type tcol struct {
	kind byte
	data string
}

func appendTuple(dst []byte, cols ...tcol) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(cols)))
	for _, c := range cols {
		dst = append(dst, c.kind)
		if c.kind == 't' || c.kind == 'b' {
			dst = binary.BigEndian.AppendUint32(dst, uint32(len(c.data)))
			dst = append(dst, c.data...)
		}
	}
	return dst
}

func rowMsg(typ byte, rel uint32, parts ...any) []byte {
	b := binary.BigEndian.AppendUint32([]byte{typ}, rel)
	for _, p := range parts {
		switch p := p.(type) {
		case byte:
			b = append(b, p)
		case []tcol:
			b = appendTuple(b, p...)
		}
	}
	return b
}

var (
	tupA = []tcol{{'t', "42"}, {'t', "acme"}, {'n', ""}, {'u', ""}, {'t', ""}, {'t', `{"a":[1,2]}`}, {'b', "\x00\x01"}}
	tupB = []tcol{{'t', "42"}, {'t', "acme, inc"}, {'t', "x"}, {'u', ""}, {'n', ""}, {'t', `{}`}, {'n', ""}}
)

func rowMessages() map[string][]byte {
	return map[string][]byte{
		"insert":        rowMsg('I', 16384, byte('N'), tupA),
		"update full":   rowMsg('U', 16384, byte('O'), tupA, byte('N'), tupB),
		"update key":    rowMsg('U', 16385, byte('K'), []tcol{{'t', "42"}, {'n', ""}}, byte('N'), tupB),
		"update no old": rowMsg('U', 7, byte('N'), tupB),
		"delete full":   rowMsg('D', 16384, byte('O'), tupB),
		"delete key":    rowMsg('D', 16384, byte('K'), []tcol{{'t', "42"}}),
	}
}

// TestRowParserMatchesPglogrepl: the reusing parser yields what
// pglogrepl.Parse does, message after message with the same parser.
func TestRowParserMatchesPglogrepl(t *testing.T) {
	var p rowParser
	msgs := rowMessages()
	for range 2 {
		for name, data := range msgs {
			want, err := pglogrepl.Parse(data)
			if err != nil {
				t.Fatalf("%s: pglogrepl: %v", name, err)
			}
			got, ok, err := p.parse(data)
			if !ok || err != nil {
				t.Fatalf("%s: parse = %v, %v", name, ok, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("%s:\n got %#v\nwant %#v", name, got, want)
			}
		}
	}
}

func TestRowParserOtherMessages(t *testing.T) {
	var p rowParser
	for _, data := range [][]byte{nil, {'B', 0, 0}, {'C'}, {'R', 1, 2, 3}, {'T'}} {
		if _, ok, err := p.parse(data); ok || err != nil {
			t.Errorf("%q: ok %v, err %v; want it left to pglogrepl", data, ok, err)
		}
	}
}

// TestRowParserTruncated: every cut of a row message is an error, never a
// panic or a message.
func TestRowParserTruncated(t *testing.T) {
	var p rowParser
	for name, data := range rowMessages() {
		for n := 1; n < len(data); n++ {
			if msg, ok, err := p.parse(data[:n]); !ok || err == nil {
				t.Errorf("%s cut at %d of %d: ok %v, err %v, msg %#v", name, n, len(data), ok, err, msg)
			}
		}
	}
	bad := map[string][]byte{
		"insert not N":       rowMsg('I', 1, byte('O'), tupA),
		"update unknown":     rowMsg('U', 1, byte('X'), tupA),
		"update old then K":  rowMsg('U', 1, byte('O'), tupA, byte('K'), tupB),
		"delete unknown":     rowMsg('D', 1, byte('N'), tupA),
		"value longer":       append(rowMsg('I', 1, byte('N')), 0, 1, 't', 0xff, 0xff, 0xff, 0xff, 'x'),
		"more columns than":  append(rowMsg('I', 1, byte('N')), 0, 2, 'n'),
		"tuple without size": rowMsg('D', 1, byte('K')),
	}
	for name, data := range bad {
		if _, ok, err := p.parse(data); !ok || err == nil {
			t.Errorf("%s: ok %v, err %v", name, ok, err)
		}
	}
}

// TestRowParserAliases: column data point into the message, so they must
// not outlive it; the Decoder copies what it keeps.
func TestRowParserAliases(t *testing.T) {
	var p rowParser
	data := rowMsg('I', 1, byte('N'), []tcol{{'t', "hello"}})
	msg, _, err := p.parse(data)
	if err != nil {
		t.Fatal(err)
	}
	col := msg.(*pglogrepl.InsertMessage).Tuple.Columns[0]
	if !bytes.Equal(col.Data, []byte("hello")) || cap(col.Data) != len("hello") || &col.Data[0] != &data[len(data)-5] {
		t.Fatalf("column data %q (cap %d) does not alias the message", col.Data, cap(col.Data))
	}
}

func BenchmarkParseRow(b *testing.B) {
	data := rowMessages()["update full"]
	b.Run("pglogrepl", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := pglogrepl.Parse(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("rowParser", func(b *testing.B) {
		var p rowParser
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := p.parse(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
