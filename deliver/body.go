package deliver

import (
	"sync"
	"unicode/utf8"
)

// OccurredAtLayout is the layout of "occurred_at": RFC 3339 in UTC with
// microseconds, the precision of a Postgres commit time.
const OccurredAtLayout = "2006-01-02T15:04:05.000000Z"

// AppendBody appends the JSON body of ev to dst and returns the result:
//
//	{"id":"…","event":"…","table":"…","occurred_at":"…","group":{…},"previous":{…}}
//
// Keys come in that fixed order. With full (the endpoint's include_data),
// "group" is ev.Row and "previous" is ev.Previous when it is not nil; without
// it, "group" is ev.Key and "previous" is left out. Row, Key and Previous
// are copied as they are (cdc made them compact JSON). Strings are escaped
// as JSON.stringify does: no HTML escaping, so a receiver that re-serialises
// the parsed body gets the same bytes.
func AppendBody(dst []byte, ev *Event, full bool) []byte {
	dst = append(dst, `{"id":`...)
	dst = appendString(dst, ev.ID)
	dst = append(dst, `,"event":`...)
	dst = appendString(dst, ev.Type)
	dst = append(dst, `,"table":`...)
	dst = appendString(dst, ev.Table)
	dst = append(dst, `,"occurred_at":"`...)
	dst = ev.OccurredAt.UTC().AppendFormat(dst, OccurredAtLayout)
	dst = append(dst, `","group":`...)
	group := ev.Key
	if full {
		group = ev.Row
	}
	dst = appendRaw(dst, group)
	if full && ev.Previous != nil {
		dst = append(dst, `,"previous":`...)
		dst = appendRaw(dst, ev.Previous)
	}
	return append(dst, '}')
}

// bodyLen estimates the size of a body, so it is built in one allocation.
func bodyLen(ev *Event, full bool) int {
	n := 80 + len(ev.ID) + len(ev.Type) + len(ev.Table) + len(OccurredAtLayout)
	if full {
		return n + len(ev.Row) + len(ev.Previous) + 12
	}
	return n + len(ev.Key)
}

func appendRaw(dst, raw []byte) []byte {
	if len(raw) == 0 {
		return append(dst, "null"...)
	}
	return append(dst, raw...)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. It escapes '"', '\\' and control
// characters below U+0020 like JSON.stringify (\b \t \n \f \r, else \u00xx)
// and nothing else; invalid UTF-8 becomes U+FFFD, as encoding/json does.
func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\r':
				dst = append(dst, '\\', 'r')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\uFFFD"...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// bodies builds an event's two body variants at most once each and shares
// them between all endpoints and attempts. The bytes are never modified
// after they are built.
type bodies struct {
	fullOnce, thinOnce sync.Once
	full, thin         []byte
}

func (b *bodies) get(ev *Event, full bool) []byte {
	if full {
		b.fullOnce.Do(func() { b.full = AppendBody(make([]byte, 0, bodyLen(ev, true)), ev, true) })
		return b.full
	}
	b.thinOnce.Do(func() { b.thin = AppendBody(make([]byte, 0, bodyLen(ev, false)), ev, false) })
	return b.thin
}
