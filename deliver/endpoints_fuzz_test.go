package deliver

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzValidateURL checks ValidateURL against what the delivery path needs:
// an accepted URL is absolute http(s) with a host, no user info, within
// MaxURLLength, and makes a request; a refused one is refused with a
// message that does not repeat the URL or its password. The seed corpus is
// in testdata/fuzz/FuzzValidateURL; CI runs a short pass.
func FuzzValidateURL(f *testing.F) {
	for _, s := range []string{
		"https://example.com/hooks/groups",
		"http://127.0.0.1:8080/x?token=abc",
		"https://user:hunter2pass@example.com/",
		"https://[::1]:443/",
		"https://[fe80::1%25eth0]/",
		"http://[::1",
		"HTTPS://EXAMPLE.COM",
		"https:///path",
		"https://:80/",
		"mailto:ops@example.com",
		"https:example.com",
		"//example.com/x",
		"https://exa mple.com/",
		"https://example.com/%zz",
		"https://example.com:99999999999/",
		"https://example.com/\x00",
		"https://" + strings.Repeat("a", MaxURLLength),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		err := ValidateURL(raw)
		if err == nil {
			if len(raw) > MaxURLLength {
				t.Fatalf("accepted a %d-character URL", len(raw))
			}
			u, perr := url.Parse(raw)
			if perr != nil {
				t.Fatalf("accepted %q, which does not parse: %v", raw, perr)
			}
			if u.Scheme != "http" && u.Scheme != "https" {
				t.Fatalf("accepted scheme %q", u.Scheme)
			}
			if u.Hostname() == "" || u.Opaque != "" {
				t.Fatalf("accepted %q without a host", raw)
			}
			if u.User != nil {
				t.Fatalf("accepted %q with user info", raw)
			}
			if _, rerr := http.NewRequest(http.MethodPost, raw, nil); rerr != nil {
				t.Fatalf("accepted %q, which makes no request: %v", raw, rerr)
			}
			return
		}
		msg := err.Error()
		if msg == "" || !utf8.ValidString(msg) && utf8.ValidString(raw) {
			t.Fatalf("bad error message %q", msg)
		}
		if len(raw) >= 12 && strings.Contains(msg, raw) {
			t.Fatalf("the error repeats the URL: %q", msg)
		}
		// A password (between "://user:" and "@", appearing once in the
		// input) never shows up in the message.
		if _, rest, ok := strings.Cut(raw, "://"); ok {
			if at := strings.LastIndex(rest, "@"); at > 0 {
				if _, pw, ok := strings.Cut(rest[:at], ":"); ok && len(pw) >= 6 &&
					!strings.ContainsAny(pw, ":/@%") && strings.Count(raw, pw) == 1 && strings.Contains(msg, pw) {
					t.Fatalf("the error repeats the password: %q", msg)
				}
			}
		}
	})
}
