package main

// Settings that keep deliveries and the admin API safe: the dial-time SSRF
// guard, https only, extra CAs, the admin token and the rotation overlap.

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"

	"github.com/grouphook/grouphook/deliver"
)

// minAdminTokenLength is the shortest GROUPHOOK_ADMIN_TOKEN accepted.
const minAdminTokenLength = 32

// validateSecurity checks the security settings; LoadConfig calls it. Its
// messages never repeat the admin token.
func (c *Config) validateSecurity() error {
	if c.AdminToken != "" {
		if len(c.AdminToken) < minAdminTokenLength {
			return fmt.Errorf("GROUPHOOK_ADMIN_TOKEN is %d characters long: use at least %d random characters, e.g. from openssl rand -hex 32, or unset it to turn the admin API off",
				len(c.AdminToken), minAdminTokenLength)
		}
		for i := 0; i < len(c.AdminToken); i++ {
			if ch := c.AdminToken[i]; ch <= ' ' || ch > '~' {
				return fmt.Errorf("GROUPHOOK_ADMIN_TOKEN has a space or a character that is not printable ASCII at position %d: use letters, digits and punctuation only", i+1)
			}
		}
	}
	if c.RotationOverlap < 0 {
		return fmt.Errorf("GROUPHOOK_ROTATION_OVERLAP must not be negative, got %s: use a duration such as 24h, or 0 to revoke an old secret at once", c.RotationOverlap)
	}
	if _, err := c.allowedPrefixes(); err != nil {
		return err
	}
	if c.CAFile != "" {
		if _, err := loadCAFile(c.CAFile); err != nil {
			return err
		}
	}
	return nil
}

func (c *Config) allowedPrefixes() ([]netip.Prefix, error) {
	var list []string
	for _, s := range c.AllowedCIDRs {
		list = append(list, strings.TrimSpace(s))
	}
	prefixes, err := deliver.ParseCIDRs(list)
	if err != nil {
		return nil, fmt.Errorf("GROUPHOOK_ALLOWED_CIDRS is not valid: %w: give a comma list such as 10.20.0.0/16,fd00:1::/48", err)
	}
	return prefixes, nil
}

// loadCAFile returns the system roots plus the PEM certificates in path.
func loadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("GROUPHOOK_CA_FILE cannot be read: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil || pool == nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("GROUPHOOK_CA_FILE %s holds no PEM certificate: give a file with one or more -----BEGIN CERTIFICATE----- blocks", path)
	}
	return pool, nil
}

// httpOptions builds the delivery client's options from cfg: the SSRF
// guard unless GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS, https only with
// GROUPHOOK_REQUIRE_HTTPS, and GROUPHOOK_CA_FILE's roots. It logs what is
// relaxed.
func httpOptions(cfg Config, logger *slog.Logger) (deliver.HTTPOptions, error) {
	o := deliver.HTTPOptions{MaxIdleConnsPerHost: cfg.Workers, RequireHTTPS: cfg.RequireHTTPS}
	if cfg.AllowPrivateDestinations {
		logger.Warn("GROUPHOOK_ALLOW_PRIVATE_DESTINATIONS=true: deliveries may reach loopback, private and link-local addresses; use it only for tests and trusted endpoints")
	} else {
		prefixes, err := cfg.allowedPrefixes()
		if err != nil {
			return o, err
		}
		if len(prefixes) > 0 {
			logger.Info("deliveries may reach these private ranges (GROUPHOOK_ALLOWED_CIDRS)", "cidrs", fmt.Sprint(prefixes))
		}
		o.Control = deliver.NewDialGuard(prefixes...).Control
	}
	if cfg.CAFile != "" {
		roots, err := loadCAFile(cfg.CAFile)
		if err != nil {
			return o, err
		}
		o.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	}
	return o, nil
}
