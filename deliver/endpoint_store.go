package deliver

// Managing grouphook.endpoints: the operations behind "grouphook endpoints"
// and the admin API. Every write validates its whole input first and
// writes nothing when any of it is wrong.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// Limits on endpoint fields written through the CLI and the admin API.
const (
	MaxClientIDLength = 200
	MinSecretLength   = 16
	MaxSecretLength   = 1024
	// SecretBytes is the size of a generated secret's key.
	SecretBytes = 32
)

// NotFoundError is a request for an endpoint that does not exist. Nothing
// was changed.
type NotFoundError struct{ ID int64 }

func (e *NotFoundError) Error() string {
	return fmt.Sprintf("endpoint %d does not exist (see grouphook endpoints list)", e.ID)
}

// IsNotFound reports whether err is, or wraps, a *NotFoundError.
func IsNotFound(err error) bool {
	var nf *NotFoundError
	return errors.As(err, &nf)
}

// GenerateSecret returns a new endpoint secret: "whsec_" and the standard
// base64 of SecretBytes random bytes, as Standard Webhooks libraries expect.
func GenerateSecret() (string, error) {
	b := make([]byte, SecretBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("generate a secret: %w", err)
	}
	return whsecPrefix + base64.StdEncoding.EncodeToString(b), nil
}

// EndpointInfo is one row of grouphook.endpoints as the CLI and the admin
// API show it. It never holds a secret.
type EndpointInfo struct {
	ID          int64    `json:"id"`
	ClientID    *string  `json:"client_id"` // null: every tenant
	URL         string   `json:"url"`
	Events      []string `json:"events"`
	IncludeData bool     `json:"include_data"`
	Enabled     bool     `json:"enabled"`
	// DisabledReason says why grouphook (or an operator) disabled it.
	DisabledReason *string    `json:"disabled_reason"`
	DisabledAt     *time.Time `json:"disabled_at"`
	LastSuccessAt  *time.Time `json:"last_success_at"`
	FailingSince   *time.Time `json:"failing_since"`
	// PreviousSecretExpiresAt is set while the secret replaced by the last
	// rotation still signs (the rotation overlap).
	PreviousSecretExpiresAt *time.Time `json:"previous_secret_expires_at"`
	CreatedAt               time.Time  `json:"created_at"`
	UpdatedAt               time.Time  `json:"updated_at"`
}

const endpointInfoColumns = `id, client_id, url, events, include_data, enabled, disabled_reason, disabled_at,
	last_success_at, failing_since,
	CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END, created_at, updated_at`

func scanEndpointInfo(row pgx.Row) (EndpointInfo, error) {
	var e EndpointInfo
	err := row.Scan(&e.ID, &e.ClientID, &e.URL, &e.Events, &e.IncludeData, &e.Enabled, &e.DisabledReason, &e.DisabledAt,
		&e.LastSuccessAt, &e.FailingSince, &e.PreviousSecretExpiresAt, &e.CreatedAt, &e.UpdatedAt)
	return e, err
}

// NewEndpoint is an endpoint to add.
type NewEndpoint struct {
	URL string
	// ClientID, when set, limits the endpoint to that tenant's groups (with
	// GROUPHOOK_TENANT_COLUMN); nil gets every tenant's.
	ClientID *string
	// Events is a subset of CREATE, UPDATE, DELETE; nil means all three.
	Events []string
	// NoData sends only the primary-key columns (include_data = false).
	NoData bool
	// Secret is the signing secret; "" generates one (GenerateSecret).
	Secret string
	// Disabled adds the endpoint disabled.
	Disabled bool
}

// EndpointUpdate changes some fields of an endpoint; nil fields stay.
type EndpointUpdate struct {
	URL *string
	// ClientID sets the tenant; ClearClient sets it to NULL (every tenant).
	ClientID    *string
	ClearClient bool
	Events      []string
	IncludeData *bool
}

// Empty reports whether u changes nothing.
func (u EndpointUpdate) Empty() bool {
	return u.URL == nil && u.ClientID == nil && !u.ClearClient && u.Events == nil && u.IncludeData == nil
}

// ValidateClientID checks a client id: not empty, at most
// MaxClientIDLength bytes of UTF-8 without control characters, and no
// leading or trailing space (a tenant is matched exactly).
func ValidateClientID(c string) error {
	switch {
	case c == "":
		return errors.New("client_id is empty: give the tenant's id, or leave it out for an endpoint that gets every tenant's groups")
	case len(c) > MaxClientIDLength:
		return fmt.Errorf("client_id is %d bytes long, more than the %d allowed", len(c), MaxClientIDLength)
	case !utf8.ValidString(c):
		return errors.New("client_id is not valid UTF-8")
	case strings.TrimSpace(c) != c:
		return errors.New("client_id starts or ends with white space; tenants are matched exactly")
	case strings.IndexFunc(c, unicode.IsControl) >= 0:
		return errors.New("client_id contains a control character")
	}
	return nil
}

// NormalizeEvents checks event types and returns them upper-cased, without
// repeats, in the order CREATE, UPDATE, DELETE. The list must not be empty.
func NormalizeEvents(events []string) ([]string, error) {
	if len(events) == 0 {
		return nil, errors.New("events is empty: give at least one of CREATE, UPDATE, DELETE")
	}
	var set EventSet
	for _, e := range events {
		t := strings.ToUpper(strings.TrimSpace(e))
		bit := EventBit(t)
		if bit == 0 {
			return nil, fmt.Errorf("events: %q is not an event type: use CREATE, UPDATE or DELETE", clipInput(e))
		}
		set |= bit
	}
	return strings.Split(set.String(), ","), nil
}

// ValidateSecret checks a secret given by hand: MinSecretLength to
// MaxSecretLength printable ASCII characters without spaces; a "whsec_"
// secret must be followed by standard base64 of at least 16 bytes, the
// form Standard Webhooks libraries decode. The error never repeats the
// secret.
func ValidateSecret(s string) error {
	if len(s) < MinSecretLength {
		return fmt.Errorf("secret is %d characters long; use at least %d (or leave it out to have one generated)", len(s), MinSecretLength)
	}
	if len(s) > MaxSecretLength {
		return fmt.Errorf("secret is %d characters long, more than the %d allowed", len(s), MaxSecretLength)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("secret has a character that is not printable ASCII, or a space, at position %d", i+1)
		}
	}
	if rest, ok := strings.CutPrefix(s, whsecPrefix); ok {
		key, err := base64.StdEncoding.DecodeString(rest)
		if err != nil || len(key) < 16 {
			return errors.New("secret starts with whsec_ but the rest is not standard base64 of at least 16 bytes")
		}
	}
	return nil
}

// clipInput shortens user input quoted in an error message.
func clipInput(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

func inputErr(err error) error { return &InputError{Msg: err.Error()} }

// AddEndpoint validates e and inserts it. It returns the new row and the
// secret, which the caller shows once: nothing else ever returns it.
// Invalid input is an *InputError naming the field, and nothing is
// written.
func AddEndpoint(ctx context.Context, db DB, e NewEndpoint) (EndpointInfo, string, error) {
	if err := ValidateURL(e.URL); err != nil {
		return EndpointInfo{}, "", inputErr(err)
	}
	if e.ClientID != nil {
		if err := ValidateClientID(*e.ClientID); err != nil {
			return EndpointInfo{}, "", inputErr(err)
		}
	}
	events := []string{TypeCreate, TypeUpdate, TypeDelete}
	if e.Events != nil {
		var err error
		if events, err = NormalizeEvents(e.Events); err != nil {
			return EndpointInfo{}, "", inputErr(err)
		}
	}
	secret := e.Secret
	if secret == "" {
		var err error
		if secret, err = GenerateSecret(); err != nil {
			return EndpointInfo{}, "", err
		}
	} else if err := ValidateSecret(secret); err != nil {
		return EndpointInfo{}, "", inputErr(err)
	}
	info, err := scanEndpointInfo(db.QueryRow(ctx, `INSERT INTO grouphook.endpoints
		(client_id, url, secret_key, events, include_data, enabled) VALUES ($1, $2, $3, $4, $5, $6)
		RETURNING `+endpointInfoColumns, e.ClientID, e.URL, secret, events, !e.NoData, !e.Disabled))
	if err != nil {
		return EndpointInfo{}, "", fmt.Errorf("add endpoint: %w", err)
	}
	return info, secret, nil
}

// EndpointFilter selects endpoints for ListEndpoints.
type EndpointFilter struct {
	// ClientID, when set, selects that client's endpoints.
	ClientID *string
}

// ListEndpoints returns the endpoints that match f, by id.
func ListEndpoints(ctx context.Context, db DB, f EndpointFilter) ([]EndpointInfo, error) {
	rows, err := db.Query(ctx, `SELECT `+endpointInfoColumns+` FROM grouphook.endpoints
		WHERE $1::text IS NULL OR client_id = $1 ORDER BY id`, f.ClientID)
	if err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	eps, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (EndpointInfo, error) { return scanEndpointInfo(r) })
	if err != nil {
		return nil, fmt.Errorf("list endpoints: %w", err)
	}
	if eps == nil {
		eps = []EndpointInfo{}
	}
	return eps, nil
}

// GetEndpoint returns one endpoint, or a *NotFoundError.
func GetEndpoint(ctx context.Context, db DB, id int64) (EndpointInfo, error) {
	return oneEndpoint(id, "read", db.QueryRow(ctx, `SELECT `+endpointInfoColumns+` FROM grouphook.endpoints WHERE id = $1`, id))
}

func oneEndpoint(id int64, op string, row pgx.Row) (EndpointInfo, error) {
	info, err := scanEndpointInfo(row)
	if errors.Is(err, pgx.ErrNoRows) {
		return info, &NotFoundError{ID: id}
	}
	if err != nil {
		return info, fmt.Errorf("%s endpoint %d: %w", op, id, err)
	}
	return info, nil
}

// UpdateEndpoint validates u and applies it to endpoint id. Invalid input
// is an *InputError naming the field; an unknown id a *NotFoundError;
// either way nothing is written.
func UpdateEndpoint(ctx context.Context, db DB, id int64, u EndpointUpdate) (EndpointInfo, error) {
	if u.Empty() {
		return EndpointInfo{}, &InputError{Msg: "nothing to update: give url, client_id, events or include_data"}
	}
	if u.URL != nil {
		if err := ValidateURL(*u.URL); err != nil {
			return EndpointInfo{}, inputErr(err)
		}
	}
	if u.ClientID != nil && u.ClearClient {
		return EndpointInfo{}, &InputError{Msg: "client_id: give a client or clear it, not both"}
	}
	if u.ClientID != nil {
		if err := ValidateClientID(*u.ClientID); err != nil {
			return EndpointInfo{}, inputErr(err)
		}
	}
	var events []string
	if u.Events != nil {
		var err error
		if events, err = NormalizeEvents(u.Events); err != nil {
			return EndpointInfo{}, inputErr(err)
		}
	}
	return oneEndpoint(id, "update", db.QueryRow(ctx, `UPDATE grouphook.endpoints SET
		url = coalesce($2, url),
		client_id = CASE WHEN $3 THEN NULL ELSE coalesce($4, client_id) END,
		events = coalesce($5, events),
		include_data = coalesce($6, include_data)
		WHERE id = $1 RETURNING `+endpointInfoColumns, id, u.URL, u.ClearClient, u.ClientID, events, u.IncludeData))
}

// OperatorDisabledReason is disabled_reason of an endpoint disabled with
// SetEndpointEnabled.
const OperatorDisabledReason = "disabled by an operator"

// SetEndpointEnabled enables or disables endpoint id; a running grouphook
// notices within GROUPHOOK_ENDPOINT_REFRESH. Deliveries already queued for
// a disabled endpoint wait until it is enabled again. An unknown id is a
// *NotFoundError.
func SetEndpointEnabled(ctx context.Context, db DB, id int64, enabled bool) (EndpointInfo, error) {
	if enabled {
		return oneEndpoint(id, "enable", db.QueryRow(ctx, `UPDATE grouphook.endpoints SET enabled = true
			WHERE id = $1 RETURNING `+endpointInfoColumns, id))
	}
	return oneEndpoint(id, "disable", db.QueryRow(ctx, `UPDATE grouphook.endpoints SET enabled = false,
		disabled_reason = CASE WHEN enabled THEN $2 ELSE disabled_reason END,
		disabled_at = CASE WHEN enabled THEN now() ELSE disabled_at END
		WHERE id = $1 RETURNING `+endpointInfoColumns, id, OperatorDisabledReason))
}

// RemoveEndpoint deletes endpoint id, and with it its queued deliveries.
// An unknown id is a *NotFoundError.
func RemoveEndpoint(ctx context.Context, db DB, id int64) error {
	tag, err := db.Exec(ctx, `DELETE FROM grouphook.endpoints WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("remove endpoint %d: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return &NotFoundError{ID: id}
	}
	return nil
}

// RotateSecret gives endpoint id a new secret (secret, or a generated one
// when ""), and keeps the old one signing for overlap: until then
// webhook-signature carries a signature with each, so a receiver can switch
// without missing a callback; x-hashed-key uses the new secret at once. An
// overlap of 0 revokes the old secret at once. A rotation during an
// overlap replaces the older previous secret. It returns the row and the
// new secret, which the caller shows once.
func RotateSecret(ctx context.Context, db DB, id int64, secret string, overlap time.Duration) (EndpointInfo, string, error) {
	if overlap < 0 {
		return EndpointInfo{}, "", &InputError{Msg: fmt.Sprintf("overlap must not be negative, got %s", overlap)}
	}
	if secret == "" {
		var err error
		if secret, err = GenerateSecret(); err != nil {
			return EndpointInfo{}, "", err
		}
	} else if err := ValidateSecret(secret); err != nil {
		return EndpointInfo{}, "", inputErr(err)
	}
	info, err := oneEndpoint(id, "rotate the secret of", db.QueryRow(ctx, `UPDATE grouphook.endpoints SET
		previous_secret_key = CASE WHEN $3::bigint > 0 AND secret_key <> $2 THEN secret_key END,
		previous_secret_expires_at = CASE WHEN $3::bigint > 0 AND secret_key <> $2 THEN now() + $3::bigint * interval '1 microsecond' END,
		secret_key = $2
		WHERE id = $1 RETURNING `+endpointInfoColumns, id, secret, overlap.Microseconds()))
	if err != nil {
		return info, "", err
	}
	return info, secret, nil
}
