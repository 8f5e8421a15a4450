package cdc

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

func mustBuiltin(t testing.TB, oid uint32) encodeFunc {
	t.Helper()
	enc, ok := builtinEncoder(oid)
	if !ok {
		t.Fatalf("no built-in encoder for oid %d", oid)
	}
	return enc
}

type valueCase struct {
	in, want string
}

// checkValues runs enc over each case, after a prefix that must survive.
func checkValues(t *testing.T, enc encodeFunc, cases []valueCase) {
	t.Helper()
	for _, tc := range cases {
		prefix := []byte(`{"x":`)
		got := enc(bytes.Clone(prefix), []byte(tc.in))
		if !bytes.HasPrefix(got, prefix) {
			t.Errorf("%q: prefix clobbered: %s", tc.in, got)
			continue
		}
		got = got[len(prefix):]
		if string(got) != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.in, got, tc.want)
		}
		if !json.Valid(got) {
			t.Errorf("%q: invalid JSON %s", tc.in, got)
		}
	}
}

func TestValueInt(t *testing.T) {
	cases := []valueCase{
		{"0", "0"},
		{"42", "42"},
		{"-32768", "-32768"},
		{"2147483647", "2147483647"},
		{"9223372036854775807", "9223372036854775807"},
		{"-9223372036854775808", "-9223372036854775808"},
		// Not integers: their text form as a string, never a bad number.
		{"007", `"007"`},
		{"-", `"-"`},
		{"", `""`},
		{"1.5", `"1.5"`},
		{"1e3", `"1e3"`},
		{"+1", `"+1"`},
	}
	for _, oid := range []uint32{pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID} {
		t.Run(fmt.Sprint(oid), func(t *testing.T) { checkValues(t, mustBuiltin(t, oid), cases) })
	}
}

func TestValueNumeric(t *testing.T) {
	checkValues(t, mustBuiltin(t, pgtype.NumericOID), []valueCase{
		{"1.50", `"1.50"`},
		{"-0.000000000000000000000000000001", `"-0.000000000000000000000000000001"`},
		{"123456789012345678901234567890123456789012345678901234567890.123456789012345678901234567890",
			`"123456789012345678901234567890123456789012345678901234567890.123456789012345678901234567890"`},
		{"NaN", `"NaN"`},
		{"Infinity", `"Infinity"`},
		{"-Infinity", `"-Infinity"`},
	})
}

func TestValueBool(t *testing.T) {
	checkValues(t, mustBuiltin(t, pgtype.BoolOID), []valueCase{
		{"t", "true"},
		{"f", "false"},
		{"x", `"x"`},
		{"", `""`},
	})
}

func TestValueText(t *testing.T) {
	cases := []valueCase{
		{"", `""`},
		{"plain", `"plain"`},
		{`a"b\c`, `"a\"b\\c"`},
		{"<script>&amp;</script>", `"<script>&amp;</script>"`}, // no HTML escaping
		{"\n\r\t\b\f\x00\x01\x1f\x7f", `"\n\r\t\b\f\u0000\u0001\u001f` + "\x7f\""},
		{"é✓😀", `"é✓😀"`},
		{"\u2028\u2029", "\"\u2028\u2029\""}, // as JSON.stringify leaves them
		{"a\xffb\xc3", `"a\ufffdb\ufffd"`},
		{"ab   ", `"ab   "`}, // bpchar keeps its padding
	}
	for _, oid := range []uint32{pgtype.TextOID, pgtype.VarcharOID, pgtype.BPCharOID, pgtype.NameOID, pgtype.QCharOID, pgtype.Float8OID, pgtype.IntervalOID} {
		t.Run(fmt.Sprint(oid), func(t *testing.T) { checkValues(t, mustBuiltin(t, oid), cases) })
	}
	checkValues(t, mustBuiltin(t, pgtype.UUIDOID), []valueCase{
		{"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
	})
	// Anything the decoder does not know is its text form.
	checkValues(t, encodeText, []valueCase{{"(1,2)", `"(1,2)"`}})
}

func TestValueDate(t *testing.T) {
	checkValues(t, mustBuiltin(t, pgtype.DateOID), []valueCase{
		{"2024-02-29", `"2024-02-29"`},
		{"0001-01-01", `"0001-01-01"`},
		{"infinity", `"infinity"`},
		{"-infinity", `"-infinity"`},
		{"0044-03-15 BC", `"0044-03-15 BC"`},
		{"12024-01-01", `"12024-01-01"`},
	})
}

func TestValueJSON(t *testing.T) {
	cases := []valueCase{
		// json keeps the input text: compact it.
		{`{"a" : [1, 2 ,3], "b":"<x>"}`, `{"a":[1,2,3],"b":"<x>"}`},
		// jsonb output: spaces after ':' and ','.
		{`{"a": null, "b": {"c": [1, 2.50, "x y"]}}`, `{"a":null,"b":{"c":[1,2.50,"x y"]}}`},
		{"{\n  \"k\" :\t\"a \\\" b\"\r\n}", `{"k":"a \" b"}`},
		{`"str"`, `"str"`},
		{`  null  `, `null`},
		{`123456789012345678901234567890.5e-400`, `123456789012345678901234567890.5e-400`},
		{`[ ]`, `[]`},
		{`{"html": "<&>", "u": "\u003c"}`, `{"html":"<&>","u":"\u003c"}`},
		// Not JSON: the text form.
		{`{`, `"{"`},
		{``, `""`},
		{`{"a": 1} x`, `"{\"a\": 1} x"`},
		{"\"\xff\"", `"\"\ufffd\""`},
	}
	for _, oid := range []uint32{pgtype.JSONOID, pgtype.JSONBOID} {
		t.Run(fmt.Sprint(oid), func(t *testing.T) { checkValues(t, mustBuiltin(t, oid), cases) })
	}
}

func TestValueTimestamptz(t *testing.T) {
	checkValues(t, mustBuiltin(t, pgtype.TimestamptzOID), []valueCase{
		{"2024-01-02 03:04:05.123456+00", `"2024-01-02T03:04:05.123456Z"`},
		{"2024-01-02 03:04:05+00", `"2024-01-02T03:04:05Z"`},
		{"2024-01-02 03:04:05.120000+00", `"2024-01-02T03:04:05.12Z"`},
		{"2024-01-02 03:04:05.000001+00", `"2024-01-02T03:04:05.000001Z"`},
		{"2024-01-02 03:04:05.5+05:30", `"2024-01-01T21:34:05.5Z"`},
		{"2024-01-02 03:04:05-08", `"2024-01-02T11:04:05Z"`},
		{"2024-12-31 23:30:00-01", `"2025-01-01T00:30:00Z"`},
		{"2024-02-29 00:00:00+00", `"2024-02-29T00:00:00Z"`},
		{"1900-01-01 00:00:00+05:53:28", `"1899-12-31T18:06:32Z"`},
		{"0001-01-01 01:00:00+01", `"0001-01-01T00:00:00Z"`},
		{"9999-12-31 23:59:59.999999+00", `"9999-12-31T23:59:59.999999Z"`},
		// Text form: infinity, BC, five-digit years, out of range in UTC.
		{"infinity", `"infinity"`},
		{"-infinity", `"-infinity"`},
		{"0044-03-15 12:00:00+00 BC", `"0044-03-15 12:00:00+00 BC"`},
		{"12024-01-02 03:04:05+00", `"12024-01-02 03:04:05+00"`},
		{"9999-12-31 23:00:00-05", `"9999-12-31 23:00:00-05"`},
		{"0001-01-01 00:30:00+01", `"0001-01-01 00:30:00+01"`},
		// Malformed: the text form, never a guess.
		{"2023-02-29 00:00:00+00", `"2023-02-29 00:00:00+00"`},
		{"2024-01-02 24:00:00+00", `"2024-01-02 24:00:00+00"`},
		{"2024-01-02 03:04:05", `"2024-01-02 03:04:05"`},
		{"2024-01-02 03:04:05.+00", `"2024-01-02 03:04:05.+00"`},
		{"2024-01-02 03:04:05+5", `"2024-01-02 03:04:05+5"`},
		{"2024-01-02 03:04:05+05:3", `"2024-01-02 03:04:05+05:3"`},
		{"2024-01-02 03:04:05+05:60", `"2024-01-02 03:04:05+05:60"`},
		{"2024-01-02 03:04:05.1234567890+00", `"2024-01-02 03:04:05.1234567890+00"`},
		{"Tue Jan 02 03:04:05 2024 PST", `"Tue Jan 02 03:04:05 2024 PST"`},
	})
}

func TestValueBytea(t *testing.T) {
	long := make([]byte, 2000) // crosses the 768-byte chunks
	for i := range long {
		long[i] = byte(i * 7)
	}
	hexLong := fmt.Sprintf(`\x%x`, long)
	checkValues(t, mustBuiltin(t, pgtype.ByteaOID), []valueCase{
		{`\x0a0b`, `"Cgs="`},
		{`\x0A0B0c`, `"CgsM"`},
		{`\x`, `""`},
		{"", `""`},
		{hexLong, `"` + base64.StdEncoding.EncodeToString(long) + `"`},
		// Escape format.
		{`a\000b\\`, `"YQBiXA=="`},
		{`\377\001`, `"/wE="`},
		// Unreadable: the text form.
		{`\x0`, `"\\x0"`},
		{`\xzz`, `"\\xzz"`},
		{`a\4`, `"a\\4"`},
		{`a\400`, `"a\\400"`},
	})
}

func TestValueArray(t *testing.T) {
	t.Run("text", func(t *testing.T) {
		checkValues(t, mustBuiltin(t, pgtype.TextArrayOID), []valueCase{
			{`{}`, `[]`},
			{`{a,b}`, `["a","b"]`},
			{`{"a b","c,d","e\"f","NULL",NULL,"g\\h","","{x}"}`, `["a b","c,d","e\"f","NULL",null,"g\\h","","{x}"]`},
			{`{null,NuLl,nullx}`, `[null,null,"nullx"]`},
			{`{ a , b c }`, `["a","b c"]`},
			{`{a\,b,\"}`, `["a,b","\""]`},
			{`{"<&>","é"}`, `["<&>","é"]`},
			{`{{a,b},{c,NULL}}`, `[["a","b"],["c",null]]`},
			{`[0:1]={x,y}`, `["x","y"]`},
			// Unreadable: the text form.
			{`{a,b`, `"{a,b"`},
			{`{a}}`, `"{a}}"`},
			{`abc`, `"abc"`},
			{``, `""`},
			{`{"a}`, `"{\"a}"`},
			{`{a"b}`, `"{a\"b}"`},
			{`{,}`, `"{,}"`},
			{`{a,}`, `"{a,}"`},
			{`[0:1]{a}`, `"[0:1]{a}"`},
			{`[0:1={a}`, `"[0:1={a}"`},
			{`{a\}`, `"{a\\}"`},
			{strings.Repeat("{", 20) + strings.Repeat("}", 20), `"` + strings.Repeat("{", 20) + strings.Repeat("}", 20) + `"`},
		})
	})
	t.Run("int", func(t *testing.T) {
		checkValues(t, mustBuiltin(t, pgtype.Int4ArrayOID), []valueCase{
			{`{1,NULL,-3}`, `[1,null,-3]`},
			{`{{1,2},{3,4}}`, `[[1,2],[3,4]]`},
			{`{{{1},{2}},{{3},{4}}}`, `[[[1],[2]],[[3],[4]]]`},
			{`[0:1]={5,6}`, `[5,6]`},
			{`[1:2][-1:0]={{1,2},{3,4}}`, `[[1,2],[3,4]]`},
			{`{"7"}`, `[7]`},
		})
		checkValues(t, mustBuiltin(t, pgtype.Int8ArrayOID), []valueCase{
			{`{9223372036854775807,-9223372036854775808}`, `[9223372036854775807,-9223372036854775808]`},
		})
	})
	t.Run("elements", func(t *testing.T) {
		checkValues(t, mustBuiltin(t, pgtype.BoolArrayOID), []valueCase{{`{t,f,NULL}`, `[true,false,null]`}})
		checkValues(t, mustBuiltin(t, pgtype.NumericArrayOID), []valueCase{{`{1.50,NaN,-Infinity}`, `["1.50","NaN","-Infinity"]`}})
		checkValues(t, mustBuiltin(t, pgtype.JSONBArrayOID), []valueCase{
			{`{"{\"a\": 1, \"b\": [1, 2]}","[1, 2]",NULL,"\"s\""}`, `[{"a":1,"b":[1,2]},[1,2],null,"s"]`},
		})
		checkValues(t, mustBuiltin(t, pgtype.TimestamptzArrayOID), []valueCase{
			{`{"2024-01-02 03:04:05.5+00",infinity,"2024-01-02 03:04:05-08"}`, `["2024-01-02T03:04:05.5Z","infinity","2024-01-02T11:04:05Z"]`},
		})
		checkValues(t, mustBuiltin(t, pgtype.ByteaArrayOID), []valueCase{{`{"\\x0a0b","\\x"}`, `["Cgs=",""]`}})
		checkValues(t, mustBuiltin(t, pgtype.DateArrayOID), []valueCase{{`{2024-01-02,infinity}`, `["2024-01-02","infinity"]`}})
		checkValues(t, mustBuiltin(t, pgtype.UUIDArrayOID), []valueCase{{`{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}`, `["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"]`}})
		checkValues(t, mustBuiltin(t, pgtype.Float8ArrayOID), []valueCase{{`{1.5,NaN}`, `["1.5","NaN"]`}})
	})
	t.Run("box delimiter", func(t *testing.T) {
		checkValues(t, encodeArrayOf(encodeText, ';'), []valueCase{
			{`{(1,1),(0,0);(2,2),(1,1)}`, `["(1,1),(0,0)","(2,2),(1,1)"]`},
		})
	})
}

// TestValueResolveEncoder checks the catalog rules: domains resolve to
// their base type, arrays of unknown types via typelem, anything else is
// text.
func TestValueResolveEncoder(t *testing.T) {
	const (
		posint    = 90001 // domain over int4
		posintArr = 90002 // array of posint
		mood      = 90003 // enum
		moodArr   = 90004
		tags      = 90005 // domain over text[]
		nested    = 90006 // domain over posint
		boxArr    = 1020
	)
	found := map[uint32]pgTypeRow{
		posint:    {typtype: 'd', category: 'N', base: pgtype.Int4OID},
		posintArr: {typtype: 'b', category: 'A', elem: posint, delim: ','},
		mood:      {typtype: 'e', category: 'E'},
		moodArr:   {typtype: 'b', category: 'A', elem: mood, delim: ','},
		tags:      {typtype: 'd', category: 'A', base: pgtype.TextArrayOID},
		nested:    {typtype: 'd', category: 'N', base: posint},
		boxArr:    {typtype: 'b', category: 'A', elem: pgtype.BoxOID, delim: ';'},
	}
	for _, tc := range []struct {
		oid     uint32
		in, out string
	}{
		{posint, "5", "5"},
		{nested, "5", "5"},
		{posintArr, "{1,NULL}", "[1,null]"},
		{mood, "happy", `"happy"`},
		{moodArr, "{happy,sad}", `["happy","sad"]`},
		{tags, `{a,"b c"}`, `["a","b c"]`},
		{boxArr, "{(1,1),(0,0);(2,2),(1,1)}", `["(1,1),(0,0)","(2,2),(1,1)"]`},
		{99999, "{1,2}", `"{1,2}"`}, // not in the catalog answer: text
	} {
		got := resolveEncoder(tc.oid, found, 0)(nil, []byte(tc.in))
		if string(got) != tc.out {
			t.Errorf("oid %d %q: got %s, want %s", tc.oid, tc.in, got, tc.out)
		}
	}
}

// fuzzEncoder is one encoder FuzzEncodeText drives.
type fuzzEncoder struct {
	name string
	enc  encodeFunc
}

// fuzzEncoders lists every built-in encoder and a few composed ones, in a
// stable order so that a corpus entry always picks the same one.
func fuzzEncoders() []fuzzEncoder {
	list := []fuzzEncoder{
		{"text", encodeText},
		{"box[]", encodeArrayOf(encodeText, ';')},
		{"jsonb[][]", encodeArrayOf(encodeArrayOf(encodeJSON, ','), ',')},
	}
	oids := make([]uint32, 0, len(builtinEncoders))
	for oid := range builtinEncoders {
		oids = append(oids, oid)
	}
	slices.Sort(oids)
	for _, oid := range oids {
		list = append(list, fuzzEncoder{fmt.Sprint(oid), builtinEncoders[oid]})
	}
	return list
}

// FuzzEncodeText checks that every encoder turns any input into valid JSON
// without panicking, and leaves what is already in dst alone. kind picks
// the encoder (modulo their number), so one run drives one encoder.
func FuzzEncodeText(f *testing.F) {
	encoders := fuzzEncoders()
	kindOf := func(oid uint32) uint8 {
		for i, e := range encoders {
			if e.name == fmt.Sprint(oid) {
				return uint8(i)
			}
		}
		f.Fatalf("no encoder %d", oid)
		return 0
	}
	for _, s := range []struct {
		oid uint32
		in  string
	}{
		{pgtype.TextOID, "\xff\xfe\u2028\"\\"},
		{pgtype.Int8OID, "-9223372036854775808"},
		{pgtype.BoolOID, "t"},
		{pgtype.NumericOID, "NaN"},
		{pgtype.JSONBOID, `{"a": [1, 2]}`},
		{pgtype.TimestamptzOID, "2024-01-02 03:04:05.123456+05:30"},
		{pgtype.TimestamptzOID, "infinity"},
		{pgtype.ByteaOID, `\x0a0b`},
		{pgtype.ByteaOID, `a\000b\\`},
		{pgtype.TextArrayOID, `{"a b",NULL,"c\"d"}`},
		{pgtype.Int4ArrayOID, `[0:1]={{1,2},{3,4}}`},
		{pgtype.JSONBArrayOID, `{"{\"a\": 1}",NULL}`},
	} {
		f.Add(kindOf(s.oid), []byte(s.in))
	}
	f.Fuzz(func(t *testing.T, kind uint8, in []byte) {
		checkCompactJSON(t, in)
		e := encoders[int(kind)%len(encoders)]
		prefix := []byte("[1,")
		out := e.enc(bytes.Clone(prefix), in)
		if !bytes.HasPrefix(out, prefix) {
			t.Fatalf("%s(%q): prefix clobbered: %q", e.name, in, out)
		}
		if v := out[len(prefix):]; !json.Valid(v) {
			t.Fatalf("%s(%q): invalid JSON %q", e.name, in, v)
		}
	})
}

// checkCompactJSON holds compactJSON, the fast path of encodeJSON, to
// encoding/json: it accepts only what json.Compact accepts, writes the same
// bytes, and declines valid JSON only when it nests too deeply.
func checkCompactJSON(t *testing.T, in []byte) {
	t.Helper()
	var want bytes.Buffer
	wantErr := json.Compact(&want, in)
	got, ok := compactJSON([]byte("x"), in)
	switch {
	case ok && wantErr != nil:
		t.Fatalf("compactJSON accepted %q, json.Compact: %v", in, wantErr)
	case ok && string(got[1:]) != want.String():
		t.Fatalf("compactJSON(%q) = %q, json.Compact %q", in, got[1:], want.Bytes())
	case !ok && string(got) != "x":
		t.Fatalf("compactJSON(%q) declined but wrote %q", in, got)
	case !ok && wantErr == nil && len(in) <= maxJSONDepth:
		t.Fatalf("compactJSON declined valid %q", in)
	}
}

func TestEncodeCompactJSON(t *testing.T) {
	for _, in := range []string{
		`{"a" : [1, 2 ,3], "b":"<x>"}`, ` {"k": "a \" b \/ \u00e9 \n"} `, `[]`, `{}`, `[ [ ] , { } ]`,
		`0`, `-0`, `-0.5e+10`, `1E-3`, `123456789012345678901234567890`, `true`, `false`, `null`, `""`,
		// Invalid.
		``, ` `, `01`, `-`, `1.`, `.5`, `1e`, `1e+`, `+1`, `[1,]`, `[,1]`, `{"a":1,}`, `{"a"}`, `{a:1}`,
		`"\u12"`, `"\u12zz"`, `"\x"`, "\"\x01\"", `"abc`, `[1 2]`, `{"a":1 "b":2}`, `tru`, `nulll`, `[1]]`, `"\`,
		strings.Repeat("[", maxJSONDepth+10) + strings.Repeat("]", maxJSONDepth+10),
	} {
		checkCompactJSON(t, []byte(in))
	}
	// Deeper than the fast path follows: encoding/json still embeds it.
	deep := strings.Repeat("[", maxJSONDepth+10) + strings.Repeat("]", maxJSONDepth+10)
	if got := encodeJSON(nil, []byte(deep)); string(got) != deep {
		t.Errorf("deep array: got %.40s…", got)
	}
}

// TestEncodeAllValid runs every encoder over every seed of the fuzz corpus,
// so that plain go test covers all pairs, not one encoder per seed.
func TestEncodeAllValid(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzEncodeText")
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) == 0 {
		t.Fatal("empty seed corpus")
	}
	for _, ent := range entries {
		b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		// "go test fuzz v1", then byte(k), then []byte("...").
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[2], "[]byte(") {
			t.Fatalf("%s: unexpected corpus format", ent.Name())
		}
		in, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[2], "[]byte("), ")"))
		if err != nil {
			t.Fatalf("%s: %v", ent.Name(), err)
		}
		for _, e := range fuzzEncoders() {
			out := e.enc(nil, []byte(in))
			if !json.Valid(out) {
				t.Errorf("%s on %s: invalid JSON %q", e.name, ent.Name(), out)
			}
		}
	}
}
