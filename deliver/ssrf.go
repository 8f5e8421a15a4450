package deliver

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"
)

// DialGuard refuses connections to addresses a webhook must never reach:
// loopback, private (RFC 1918), link-local (including the cloud metadata
// address 169.254.169.254), CGNAT (100.64.0.0/10), unique-local IPv6
// (fc00::/7), unspecified, multicast, broadcast and reserved addresses,
// and the IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96), 6to4
// (2002::/16) and Teredo (2001::/32) forms of those. It checks the address
// being dialed, after DNS resolution (see Control), so neither a host name
// that resolves to 127.0.0.1 nor DNS rebinding gets around it.
//
// A DialGuard is immutable and safe for concurrent use.
type DialGuard struct {
	allowed []netip.Prefix
}

// NewDialGuard returns a guard that refuses the ranges above except those
// inside one of allowed (GROUPHOOK_ALLOWED_CIDRS).
func NewDialGuard(allowed ...netip.Prefix) *DialGuard {
	g := &DialGuard{}
	for _, p := range allowed {
		g.allowed = append(g.allowed, p.Masked())
	}
	return g
}

// ParseCIDRs parses a list of CIDR prefixes such as 10.1.0.0/16 or
// fd00::/8; a bare address means just that address. The error names the
// entry that is wrong.
func ParseCIDRs(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, s := range list {
		if s == "" {
			return nil, fmt.Errorf("entry %d is empty", i+1)
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("entry %d (%q) is not a CIDR prefix such as 10.1.0.0/16", i+1, s)
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Zone() != "" {
			return nil, fmt.Errorf("entry %d (%q) has a zone", i+1, s)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// BlockedError is a connection the DialGuard refused. Its message names the
// address and why, never the URL.
type BlockedError struct {
	Addr   netip.Addr
	Reason string // e.g. "a loopback address"
}

func (e *BlockedError) Error() string {
	return fmt.Sprintf("destination %s is %s; grouphook does not deliver to private networks "+
		"(open the range with GROUPHOOK_ALLOWED_CIDRS, or set GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS=true)", e.Addr, e.Reason)
}

// ErrBlockedDestination matches every *BlockedError with errors.Is.
var ErrBlockedDestination = errors.New("destination address is blocked")

// Is makes errors.Is(err, ErrBlockedDestination) true.
func (e *BlockedError) Is(target error) bool { return target == ErrBlockedDestination }

// Control is a net.Dialer Control hook (HTTPOptions.Control): it runs for
// every connection attempt with the resolved "ip:port" and refuses blocked
// addresses before any packet is sent. An address it cannot parse is
// refused.
func (g *DialGuard) Control(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		host, _, serr := net.SplitHostPort(address)
		if serr != nil {
			return fmt.Errorf("refusing to dial %q: not an ip:port", address)
		}
		a, aerr := netip.ParseAddr(host)
		if aerr != nil {
			return fmt.Errorf("refusing to dial %q: not an IP address", address)
		}
		ap = netip.AddrPortFrom(a, 0)
	}
	return g.Check(ap.Addr())
}

// Check returns a *BlockedError when a is refused, else nil.
func (g *DialGuard) Check(a netip.Addr) error {
	a = a.WithZone("").Unmap()
	reason := blockedReason(a)
	if reason == "" {
		return nil
	}
	for _, p := range g.allowed {
		if p.Contains(a) {
			return nil
		}
		if v4, ok := embeddedIPv4(a); ok && p.Contains(v4) {
			return nil
		}
	}
	return &BlockedError{Addr: a, Reason: reason}
}

type blockedRange struct {
	prefix netip.Prefix
	reason string
}

func mustPrefixes(rs ...[2]string) []blockedRange {
	out := make([]blockedRange, len(rs))
	for i, r := range rs {
		out[i] = blockedRange{netip.MustParsePrefix(r[0]), r[1]}
	}
	return out
}

// The refused ranges. IPv4 addresses inside IPv6 are checked separately
// (embeddedIPv4).
var (
	blockedV4 = mustPrefixes(
		[2]string{"0.0.0.0/8", "an unspecified (\"this network\") address"},
		[2]string{"10.0.0.0/8", "a private (RFC 1918) address"},
		[2]string{"100.64.0.0/10", "a carrier-grade NAT (RFC 6598) address"},
		[2]string{"127.0.0.0/8", "a loopback address"},
		[2]string{"169.254.0.0/16", "a link-local address (this includes cloud metadata services)"},
		[2]string{"172.16.0.0/12", "a private (RFC 1918) address"},
		[2]string{"192.0.0.0/24", "an IETF protocol assignment (RFC 6890) address"},
		[2]string{"192.168.0.0/16", "a private (RFC 1918) address"},
		[2]string{"198.18.0.0/15", "a benchmarking (RFC 2544) address"},
		[2]string{"224.0.0.0/4", "a multicast address"},
		[2]string{"240.0.0.0/4", "a reserved or broadcast address"},
	)
	blockedV6 = mustPrefixes(
		[2]string{"::/128", "an unspecified address"},
		[2]string{"::1/128", "a loopback address"},
		[2]string{"64:ff9b:1::/48", "a local-use NAT64 (RFC 8215) address"},
		[2]string{"fc00::/7", "a unique-local IPv6 address"},
		[2]string{"fe80::/10", "a link-local address"},
		[2]string{"fec0::/10", "a site-local IPv6 address"},
		[2]string{"ff00::/8", "a multicast address"},
	)
	nat64      = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour  = netip.MustParsePrefix("2002::/16")
	teredo     = netip.MustParsePrefix("2001::/32")
	compatible = netip.MustParsePrefix("::/96") // IPv4-compatible (deprecated)
)

// blockedReason says why a (unmapped, without zone) is refused, or "".
func blockedReason(a netip.Addr) string {
	if !a.IsValid() {
		return "not a valid address"
	}
	if a.Is4() {
		for _, r := range blockedV4 {
			if r.prefix.Contains(a) {
				return r.reason
			}
		}
		return ""
	}
	for _, r := range blockedV6 {
		if r.prefix.Contains(a) {
			return r.reason
		}
	}
	if v4, ok := embeddedIPv4(a); ok {
		if r := blockedReason(v4); r != "" {
			return r + " inside an IPv6 address (" + v4.String() + ")"
		}
	}
	return ""
}

// embeddedIPv4 returns the IPv4 address an IPv6 address carries in the
// translation forms a router may turn into a connection to that IPv4
// address: NAT64 (64:ff9b::/96), 6to4 (2002::/16), Teredo's client
// (2001::/32, inverted) and IPv4-compatible (::/96).
func embeddedIPv4(a netip.Addr) (netip.Addr, bool) {
	if !a.Is6() || a.Is4In6() {
		return netip.Addr{}, false
	}
	b := a.As16()
	switch {
	case nat64.Contains(a):
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	case sixToFour.Contains(a):
		return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]}), true
	case teredo.Contains(a):
		return netip.AddrFrom4([4]byte{^b[12], ^b[13], ^b[14], ^b[15]}), true
	case compatible.Contains(a) && a != netip.IPv6Unspecified() && a != netip.IPv6Loopback():
		return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]}), true
	}
	return netip.Addr{}, false
}
