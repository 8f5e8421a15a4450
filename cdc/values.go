package cdc

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
)

// encodeFunc appends the JSON encoding of one non-NULL column value, given
// in Postgres text format, to dst. It never fails: a value it cannot read
// is sent as a JSON string of its text form, so the output is always valid
// JSON. It must not retain src.
type encodeFunc func(dst, src []byte) []byte

// scalarEncoders maps built-in scalar types to their encoder. The ones sent
// as a JSON string of their text form (encodeText) are listed only so that
// the catalog is not asked about them; any type missing here that the
// catalog does not resolve to a domain or array is text as well.
var scalarEncoders = map[uint32]encodeFunc{
	pgtype.Int2OID:        encodeInt,
	pgtype.Int4OID:        encodeInt,
	pgtype.Int8OID:        encodeInt,
	pgtype.BoolOID:        encodeBool,
	pgtype.JSONOID:        encodeJSON,
	pgtype.JSONBOID:       encodeJSON,
	pgtype.TimestamptzOID: encodeTimestamptz,
	pgtype.ByteaOID:       encodeBytea,
	// numeric (a string, to keep every digit, NaN and Infinity), text,
	// varchar, bpchar, name, "char", uuid, and date (YYYY-MM-DD under
	// DateStyle=ISO; infinity, BC and years past 9999 stay text) are all
	// their text form. They are listed so that the catalog is not asked.
	pgtype.NumericOID: encodeText,
	pgtype.TextOID:    encodeText,
	pgtype.VarcharOID: encodeText,
	pgtype.BPCharOID:  encodeText,
	pgtype.NameOID:    encodeText,
	pgtype.QCharOID:   encodeText,
	pgtype.UUIDOID:    encodeText,
	pgtype.DateOID:    encodeText,
	// Common built-in types without a JSON form of their own.
	pgtype.Float4OID:    encodeText,
	pgtype.Float8OID:    encodeText,
	pgtype.TimestampOID: encodeText,
	pgtype.TimeOID:      encodeText,
	pgtype.TimetzOID:    encodeText,
	pgtype.IntervalOID:  encodeText,
	pgtype.OIDOID:       encodeText,
	pgtype.InetOID:      encodeText,
	pgtype.CIDROID:      encodeText,
	pgtype.MacaddrOID:   encodeText,
	pgtype.BitOID:       encodeText,
	pgtype.VarbitOID:    encodeText,
	pgtype.XMLOID:       encodeText,
	pgtype.TSVectorOID:  encodeText,
	pgtype.Int4rangeOID: encodeText,
	pgtype.Int8rangeOID: encodeText,
	pgtype.NumrangeOID:  encodeText,
	pgtype.TstzrangeOID: encodeText,
	pgtype.TsrangeOID:   encodeText,
	pgtype.DaterangeOID: encodeText,
	pgtype.JSONPathOID:  encodeText,
	pgtype.XID8OID:      encodeText,
	pgtype.XIDOID:       encodeText,
	pgtype.CIDOID:       encodeText,
	pgtype.TIDOID:       encodeText,
	pgtype.Macaddr8OID:  encodeText,
	pgtype.PointOID:     encodeText,
	pgtype.LsegOID:      encodeText,
	pgtype.PathOID:      encodeText,
	pgtype.BoxOID:       encodeText,
	pgtype.PolygonOID:   encodeText,
	pgtype.LineOID:      encodeText,
	pgtype.CircleOID:    encodeText,
	pgtype.ACLItemOID:   encodeText,
	pgtype.UnknownOID:   encodeText,
	pgtype.RecordOID:    encodeText,
	790:                 encodeText, // money
	pgtype.OID8OID:      encodeText,
}

// arrayElems maps the built-in array types to their element type. All of
// them use ',' as the delimiter; box[] (';') is left to the catalog.
var arrayElems = map[uint32]uint32{
	pgtype.BoolArrayOID:        pgtype.BoolOID,
	pgtype.QCharArrayOID:       pgtype.QCharOID,
	pgtype.NameArrayOID:        pgtype.NameOID,
	pgtype.Int2ArrayOID:        pgtype.Int2OID,
	pgtype.Int4ArrayOID:        pgtype.Int4OID,
	pgtype.Int8ArrayOID:        pgtype.Int8OID,
	pgtype.TextArrayOID:        pgtype.TextOID,
	pgtype.VarcharArrayOID:     pgtype.VarcharOID,
	pgtype.BPCharArrayOID:      pgtype.BPCharOID,
	pgtype.NumericArrayOID:     pgtype.NumericOID,
	pgtype.JSONArrayOID:        pgtype.JSONOID,
	pgtype.JSONBArrayOID:       pgtype.JSONBOID,
	pgtype.TimestamptzArrayOID: pgtype.TimestamptzOID,
	pgtype.DateArrayOID:        pgtype.DateOID,
	pgtype.UUIDArrayOID:        pgtype.UUIDOID,
	pgtype.ByteaArrayOID:       pgtype.ByteaOID,
	pgtype.Float4ArrayOID:      pgtype.Float4OID,
	pgtype.Float8ArrayOID:      pgtype.Float8OID,
	pgtype.TimestampArrayOID:   pgtype.TimestampOID,
	pgtype.TimeArrayOID:        pgtype.TimeOID,
	pgtype.TimetzArrayOID:      pgtype.TimetzOID,
	pgtype.IntervalArrayOID:    pgtype.IntervalOID,
	pgtype.OIDArrayOID:         pgtype.OIDOID,
	pgtype.InetArrayOID:        pgtype.InetOID,
	pgtype.CIDRArrayOID:        pgtype.CIDROID,
	pgtype.MacaddrArrayOID:     pgtype.MacaddrOID,
	pgtype.XMLArrayOID:         pgtype.XMLOID,
}

// builtinEncoders holds an encoder for every type above, arrays included,
// so that a relation of built-in types needs no catalog lookup.
var builtinEncoders = func() map[uint32]encodeFunc {
	m := make(map[uint32]encodeFunc, len(scalarEncoders)+len(arrayElems))
	for oid, enc := range scalarEncoders {
		m[oid] = enc
	}
	for oid, elem := range arrayElems {
		m[oid] = encodeArrayOf(scalarEncoders[elem], ',')
	}
	return m
}()

// builtinEncoder returns the encoder of a built-in type, or false when the
// type must be looked up in the catalog (domains, enums, extension types,
// arrays of those).
func builtinEncoder(oid uint32) (encodeFunc, bool) {
	enc, ok := builtinEncoders[oid]
	return enc, ok
}

// encodeText sends the text form as a JSON string.
func encodeText(dst, src []byte) []byte { return appendJSONString(dst, src) }

const hexDigits = "0123456789abcdef"

// appendJSONString appends src as a JSON string without HTML escaping, the
// way JavaScript's JSON.stringify writes it: '"', '\\' and control
// characters are escaped, everything else is copied. Invalid UTF-8 becomes
// U+FFFD.
func appendJSONString(dst, src []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(src); {
		c := src[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, src[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRune(src[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, src[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, src[start:]...)
	return append(dst, '"')
}

// encodeInt copies int2/int4/int8 digits as a JSON number, never through a
// float, so every digit of an int8 survives.
func encodeInt(dst, src []byte) []byte {
	if isJSONInteger(src) {
		return append(dst, src...)
	}
	return appendJSONString(dst, src)
}

// isJSONInteger reports whether src is -?(0|[1-9][0-9]*).
func isJSONInteger(src []byte) bool {
	if len(src) > 0 && src[0] == '-' {
		src = src[1:]
	}
	if len(src) == 0 || (src[0] == '0' && len(src) > 1) {
		return false
	}
	for _, c := range src {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// encodeBool turns Postgres' t and f into true and false.
func encodeBool(dst, src []byte) []byte {
	if len(src) == 1 {
		switch src[0] {
		case 't':
			return append(dst, "true"...)
		case 'f':
			return append(dst, "false"...)
		}
	}
	return appendJSONString(dst, src)
}

// encodeJSON embeds json and jsonb values as JSON, without insignificant
// whitespace and without HTML escaping. A value that is not JSON is sent
// as a string of its text form.
func encodeJSON(dst, src []byte) []byte {
	if !utf8.Valid(src) {
		return appendJSONString(dst, src)
	}
	if out, ok := compactJSON(dst, src); ok {
		return out
	}
	// The fast path declined (invalid, or nested too deeply): let
	// encoding/json decide.
	n := len(dst)
	buf := bytes.NewBuffer(dst)
	if err := json.Compact(buf, src); err != nil {
		return appendJSONString(buf.Bytes()[:n], src)
	}
	return buf.Bytes()
}

// maxJSONDepth is the nesting compactJSON follows before it hands the value
// to encoding/json.
const maxJSONDepth = 512

// compactJSON is the fast path of encodeJSON: it appends src without
// insignificant whitespace, exactly as json.Compact does, and validates it
// on the way. It returns dst unchanged and false for anything it does not
// accept; it never accepts invalid JSON.
func compactJSON(dst, src []byte) ([]byte, bool) {
	start := len(dst)
	s := jsonScan{src: src}
	dst, ok := s.value(dst, 0)
	if ok {
		s.space()
		ok = s.i == len(src)
	}
	if !ok {
		return dst[:start], false
	}
	return dst, true
}

type jsonScan struct {
	src []byte
	i   int
}

func (s *jsonScan) space() {
	for s.i < len(s.src) {
		switch s.src[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *jsonScan) value(dst []byte, depth int) ([]byte, bool) {
	s.space()
	if s.i >= len(s.src) || depth > maxJSONDepth {
		return dst, false
	}
	switch c := s.src[s.i]; {
	case c == '{':
		return s.object(dst, depth+1)
	case c == '[':
		return s.array(dst, depth+1)
	case c == '"':
		return s.string(dst)
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number(dst)
	case c == 't':
		return s.literal(dst, "true")
	case c == 'f':
		return s.literal(dst, "false")
	case c == 'n':
		return s.literal(dst, "null")
	}
	return dst, false
}

func (s *jsonScan) literal(dst []byte, lit string) ([]byte, bool) {
	if len(s.src)-s.i < len(lit) || string(s.src[s.i:s.i+len(lit)]) != lit {
		return dst, false
	}
	s.i += len(lit)
	return append(dst, lit...), true
}

func (s *jsonScan) object(dst []byte, depth int) ([]byte, bool) {
	s.i++
	dst = append(dst, '{')
	s.space()
	if s.i < len(s.src) && s.src[s.i] == '}' {
		s.i++
		return append(dst, '}'), true
	}
	for {
		s.space()
		if s.i >= len(s.src) || s.src[s.i] != '"' {
			return dst, false
		}
		var ok bool
		if dst, ok = s.string(dst); !ok {
			return dst, false
		}
		s.space()
		if s.i >= len(s.src) || s.src[s.i] != ':' {
			return dst, false
		}
		s.i++
		dst = append(dst, ':')
		if dst, ok = s.value(dst, depth); !ok {
			return dst, false
		}
		s.space()
		if s.i >= len(s.src) {
			return dst, false
		}
		switch s.src[s.i] {
		case ',':
			s.i++
			dst = append(dst, ',')
		case '}':
			s.i++
			return append(dst, '}'), true
		default:
			return dst, false
		}
	}
}

func (s *jsonScan) array(dst []byte, depth int) ([]byte, bool) {
	s.i++
	dst = append(dst, '[')
	s.space()
	if s.i < len(s.src) && s.src[s.i] == ']' {
		s.i++
		return append(dst, ']'), true
	}
	for {
		var ok bool
		if dst, ok = s.value(dst, depth); !ok {
			return dst, false
		}
		s.space()
		if s.i >= len(s.src) {
			return dst, false
		}
		switch s.src[s.i] {
		case ',':
			s.i++
			dst = append(dst, ',')
		case ']':
			s.i++
			return append(dst, ']'), true
		default:
			return dst, false
		}
	}
}

// string copies a string as it is (escapes included); s.src[s.i] is '"'.
// UTF-8 was checked by the caller.
func (s *jsonScan) string(dst []byte) ([]byte, bool) {
	start := s.i
	s.i++
	for s.i < len(s.src) {
		c := s.src[s.i]
		switch {
		case c == '"':
			s.i++
			return append(dst, s.src[start:s.i]...), true
		case c < 0x20:
			return dst, false
		case c == '\\':
			if s.i+1 >= len(s.src) {
				return dst, false
			}
			switch s.src[s.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				s.i += 2
			case 'u':
				if s.i+6 > len(s.src) {
					return dst, false
				}
				for _, h := range s.src[s.i+2 : s.i+6] {
					if _, ok := unhex(h); !ok {
						return dst, false
					}
				}
				s.i += 6
			default:
				return dst, false
			}
		default:
			s.i++
		}
	}
	return dst, false
}

// number copies -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?.
func (s *jsonScan) number(dst []byte) ([]byte, bool) {
	start := s.i
	if s.src[s.i] == '-' {
		s.i++
	}
	switch {
	case s.i < len(s.src) && s.src[s.i] == '0':
		s.i++
	case s.i < len(s.src) && s.src[s.i] >= '1' && s.src[s.i] <= '9':
		s.digits()
	default:
		return dst, false
	}
	if s.i < len(s.src) && s.src[s.i] == '.' {
		s.i++
		if s.digits() == 0 {
			return dst, false
		}
	}
	if s.i < len(s.src) && (s.src[s.i] == 'e' || s.src[s.i] == 'E') {
		s.i++
		if s.i < len(s.src) && (s.src[s.i] == '+' || s.src[s.i] == '-') {
			s.i++
		}
		if s.digits() == 0 {
			return dst, false
		}
	}
	return append(dst, s.src[start:s.i]...), true
}

func (s *jsonScan) digits() int {
	n := 0
	for s.i < len(s.src) && s.src[s.i] >= '0' && s.src[s.i] <= '9' {
		s.i++
		n++
	}
	return n
}

// encodeTimestamptz sends a timestamptz in ISO text form (any UTC offset)
// as RFC 3339 in UTC with trailing zeros of the fraction trimmed, e.g.
// "2024-01-02T03:04:05.123456Z". infinity, -infinity, BC dates, years past
// 9999 and anything it cannot read stay their text form.
func encodeTimestamptz(dst, src []byte) []byte {
	t, ok := parseTimestamptz(src)
	if !ok {
		return appendJSONString(dst, src)
	}
	return appendRFC3339UTC(dst, t)
}

// parseTimestamptz reads "YYYY-MM-DD HH:MM:SS[.f…]±HH[:MM[:SS]]", the ISO
// DateStyle output, and returns the instant in UTC; false for anything else
// or a UTC year outside 1..9999.
func parseTimestamptz(s []byte) (time.Time, bool) {
	// Shortest: "2006-01-02 15:04:05+00".
	if len(s) < 22 || s[4] != '-' || s[7] != '-' || (s[10] != ' ' && s[10] != 'T') || s[13] != ':' || s[16] != ':' {
		return time.Time{}, false
	}
	year, ok1 := atoiFixed(s[0:4])
	month, ok2 := atoiFixed(s[5:7])
	day, ok3 := atoiFixed(s[8:10])
	hour, ok4 := atoiFixed(s[11:13])
	minute, ok5 := atoiFixed(s[14:16])
	sec, ok6 := atoiFixed(s[17:19])
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) {
		return time.Time{}, false
	}
	if month < 1 || month > 12 || day < 1 || day > daysIn(year, month) || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	s = s[19:]
	nsec := 0
	if len(s) > 0 && s[0] == '.' {
		i := 1
		scale := 100_000_000
		for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
			if i > 9 {
				return time.Time{}, false
			}
			nsec += int(s[i]-'0') * scale
			scale /= 10
		}
		if i == 1 {
			return time.Time{}, false
		}
		s = s[i:]
	}
	// UTC offset: ±HH, ±HH:MM or ±HH:MM:SS.
	if len(s) == 0 {
		return time.Time{}, false
	}
	offset := 0
	if len(s) == 1 && s[0] == 'Z' {
		s = s[1:]
	} else {
		sign := 1
		switch s[0] {
		case '+':
		case '-':
			sign = -1
		default:
			return time.Time{}, false
		}
		s = s[1:]
		for part, mul := 0, 3600; part < 3; part, mul = part+1, mul/60 {
			if part > 0 {
				if len(s) == 0 {
					break
				}
				if s[0] != ':' {
					return time.Time{}, false
				}
				s = s[1:]
			}
			if len(s) < 2 {
				return time.Time{}, false
			}
			v, ok := atoiFixed(s[:2])
			if !ok || (part > 0 && v > 59) {
				return time.Time{}, false
			}
			offset += v * mul
			s = s[2:]
		}
		offset *= sign
	}
	if len(s) != 0 { // e.g. " BC"
		return time.Time{}, false
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC).Add(-time.Duration(offset) * time.Second)
	if y := t.Year(); y < 1 || y > 9999 {
		return time.Time{}, false
	}
	return t, true
}

// atoiFixed parses a fixed-width run of decimal digits.
func atoiFixed(s []byte) (int, bool) {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

func daysIn(year, month int) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// appendRFC3339UTC appends t (in UTC, year 1..9999) as a JSON string
// "YYYY-MM-DDTHH:MM:SS[.fraction]Z", trailing zeros of the fraction
// trimmed.
func appendRFC3339UTC(dst []byte, t time.Time) []byte {
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	dst = append(dst, '"')
	dst = appendDigits(dst, year, 4)
	dst = append(dst, '-')
	dst = appendDigits(dst, int(month), 2)
	dst = append(dst, '-')
	dst = appendDigits(dst, day, 2)
	dst = append(dst, 'T')
	dst = appendDigits(dst, hour, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, minute, 2)
	dst = append(dst, ':')
	dst = appendDigits(dst, sec, 2)
	if ns := t.Nanosecond(); ns != 0 {
		width := 9
		for ns%10 == 0 {
			ns /= 10
			width--
		}
		dst = append(dst, '.')
		dst = appendDigits(dst, ns, width)
	}
	return append(dst, 'Z', '"')
}

// appendDigits appends a non-negative n zero-padded to width digits.
func appendDigits(dst []byte, n, width int) []byte {
	var buf [20]byte
	i := len(buf)
	for n > 0 || width > 0 {
		i--
		buf[i] = byte('0' + n%10)
		n /= 10
		width--
	}
	return append(dst, buf[i:]...)
}

// byteaChunk is how many decoded bytes encodeBytea gathers before it
// base64-encodes them; a multiple of 3, so the chunks' encodings
// concatenate to the encoding of the whole.
const byteaChunk = 3 * 256

// encodeBytea sends a bytea as standard base64 of its bytes. It reads the
// hex format (\x0a0b) and the escape format (a\000b\\); anything else stays
// its text form.
func encodeBytea(dst, src []byte) []byte {
	start := len(dst)
	dst = append(dst, '"')
	var chunk [byteaChunk]byte
	n := 0
	if len(src) >= 2 && src[0] == '\\' && src[1] == 'x' {
		hex := src[2:]
		if len(hex)%2 != 0 {
			return appendJSONString(dst[:start], src)
		}
		for i := 0; i < len(hex); i += 2 {
			hi, ok1 := unhex(hex[i])
			lo, ok2 := unhex(hex[i+1])
			if !ok1 || !ok2 {
				return appendJSONString(dst[:start], src)
			}
			chunk[n] = hi<<4 | lo
			n++
			if n == len(chunk) {
				dst = base64.StdEncoding.AppendEncode(dst, chunk[:])
				n = 0
			}
		}
	} else {
		for i := 0; i < len(src); {
			c := src[i]
			if c == '\\' {
				switch {
				case i+1 < len(src) && src[i+1] == '\\':
					i += 2
				case i+3 < len(src) && isOctal(src[i+1]) && src[i+1] <= '3' && isOctal(src[i+2]) && isOctal(src[i+3]):
					c = (src[i+1]-'0')<<6 | (src[i+2]-'0')<<3 | (src[i+3] - '0')
					i += 4
				default:
					return appendJSONString(dst[:start], src)
				}
			} else {
				i++
			}
			chunk[n] = c
			n++
			if n == len(chunk) {
				dst = base64.StdEncoding.AppendEncode(dst, chunk[:])
				n = 0
			}
		}
	}
	dst = base64.StdEncoding.AppendEncode(dst, chunk[:n])
	return append(dst, '"')
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func isOctal(c byte) bool { return c >= '0' && c <= '7' }

// maxArrayDepth bounds the nesting encodeArrayOf follows; Postgres allows 6
// dimensions.
const maxArrayDepth = 16

// encodeArrayOf returns the encoder for arrays whose elements elem encodes
// and which delim separates (',' for all but box). It reads the array_out
// form: optional bounds decoration "[0:1]=", nested braces, quoted elements
// with backslash escapes, and unquoted NULL. A literal it cannot read stays
// its text form.
func encodeArrayOf(elem encodeFunc, delim byte) encodeFunc {
	return func(dst, src []byte) []byte {
		start := len(dst)
		p := arrayParser{src: src, elem: elem, delim: delim}
		out, ok := p.parse(dst)
		if !ok {
			return appendJSONString(out[:start], src)
		}
		return out
	}
}

type arrayParser struct {
	src   []byte
	i     int
	elem  encodeFunc
	delim byte
	tmp   []byte // unescaped element, only when it had backslashes
}

func (p *arrayParser) parse(dst []byte) ([]byte, bool) {
	if len(p.src) > 0 && p.src[0] == '[' {
		// Bounds decoration such as "[0:1]" or "[1:2][1:3]", then '='.
		i := 0
		for i < len(p.src) && p.src[i] == '[' {
			i++
			for i < len(p.src) && (isDigit(p.src[i]) || p.src[i] == '-' || p.src[i] == '+' || p.src[i] == ':') {
				i++
			}
			if i >= len(p.src) || p.src[i] != ']' {
				return dst, false
			}
			i++
		}
		if i >= len(p.src) || p.src[i] != '=' {
			return dst, false
		}
		p.i = i + 1
	}
	p.skipSpace()
	if p.i >= len(p.src) || p.src[p.i] != '{' {
		return dst, false
	}
	dst, ok := p.array(dst, 1)
	if !ok {
		return dst, false
	}
	p.skipSpace()
	return dst, p.i == len(p.src)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isArraySpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func (p *arrayParser) skipSpace() {
	for p.i < len(p.src) && isArraySpace(p.src[p.i]) {
		p.i++
	}
}

// array reads one brace-enclosed level; p.src[p.i] is '{'.
func (p *arrayParser) array(dst []byte, depth int) ([]byte, bool) {
	if depth > maxArrayDepth {
		return dst, false
	}
	p.i++
	dst = append(dst, '[')
	p.skipSpace()
	if p.i < len(p.src) && p.src[p.i] == '}' {
		p.i++
		return append(dst, ']'), true
	}
	for {
		p.skipSpace()
		if p.i >= len(p.src) {
			return dst, false
		}
		var ok bool
		switch p.src[p.i] {
		case '{':
			dst, ok = p.array(dst, depth+1)
		case '"':
			dst, ok = p.quoted(dst)
		default:
			dst, ok = p.unquoted(dst)
		}
		if !ok {
			return dst, false
		}
		p.skipSpace()
		if p.i >= len(p.src) {
			return dst, false
		}
		switch p.src[p.i] {
		case p.delim:
			p.i++
			dst = append(dst, ',')
		case '}':
			p.i++
			return append(dst, ']'), true
		default:
			return dst, false
		}
	}
}

// quoted reads a double-quoted element; p.src[p.i] is '"'.
func (p *arrayParser) quoted(dst []byte) ([]byte, bool) {
	p.i++
	start := p.i
	escaped := false
	for p.i < len(p.src) {
		switch p.src[p.i] {
		case '\\':
			escaped = true
			p.i += 2
			continue
		case '"':
			val := p.src[start:p.i]
			p.i++
			if escaped {
				val = p.unescape(val)
			}
			return p.elem(dst, val), true
		}
		p.i++
	}
	return dst, false
}

// unquoted reads an element up to the delimiter or '}', trailing space
// trimmed; an unquoted NULL (any case) is null.
func (p *arrayParser) unquoted(dst []byte) ([]byte, bool) {
	start := p.i
	end := p.i // end of the element without trailing space
	escaped := false
	for p.i < len(p.src) {
		c := p.src[p.i]
		if c == p.delim || c == '}' {
			break
		}
		switch {
		case c == '\\':
			if p.i+1 >= len(p.src) {
				return dst, false
			}
			escaped = true
			p.i += 2
			end = p.i
			continue
		case c == '{' || c == '"':
			return dst, false
		case !isArraySpace(c):
			end = p.i + 1
		}
		p.i++
	}
	val := p.src[start:end]
	if len(val) == 0 {
		return dst, false
	}
	if escaped {
		return p.elem(dst, p.unescape(val)), true
	}
	if len(val) == 4 && (val[0]|0x20) == 'n' && (val[1]|0x20) == 'u' && (val[2]|0x20) == 'l' && (val[3]|0x20) == 'l' {
		return append(dst, "null"...), true
	}
	return p.elem(dst, val), true
}

// unescape drops the backslash of every backslash pair into p.tmp.
func (p *arrayParser) unescape(val []byte) []byte {
	p.tmp = p.tmp[:0]
	for i := 0; i < len(val); i++ {
		if val[i] == '\\' && i+1 < len(val) {
			i++
		}
		p.tmp = append(p.tmp, val[i])
	}
	return p.tmp
}
