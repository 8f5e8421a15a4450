package main

// The admin API: /v1 on GROUPHOOK_HTTP_ADDR, off unless
// GROUPHOOK_ADMIN_TOKEN is set. It does what "grouphook endpoints" and
// "grouphook deliveries" do, in JSON, through the same functions of
// package deliver. openapi.json documents it (and admin_test.go checks the
// two agree).

import (
	"crypto/sha256"
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/grouphook/grouphook/deliver"
)

//go:embed openapi.json
var openAPIDocument []byte

// maxAdminBody is the largest request body the admin API reads.
const maxAdminBody = 64 << 10

// adminAPI serves /v1. Build it with newAdminAPI; nil means off.
type adminAPI struct {
	db      deliver.DB
	token   [sha256.Size]byte // SHA-256 of the token: compared in constant time whatever its length
	overlap time.Duration
	logger  *slog.Logger
}

// newAdminAPI returns the admin API, or nil when GROUPHOOK_ADMIN_TOKEN is
// not set.
func newAdminAPI(cfg Config, db deliver.DB, logger *slog.Logger) *adminAPI {
	if cfg.AdminToken == "" {
		return nil
	}
	logger.Info("admin API on under /v1/ (GROUPHOOK_ADMIN_TOKEN is set)")
	return &adminAPI{db: db, token: sha256.Sum256([]byte(cfg.AdminToken)), overlap: cfg.RotationOverlap, logger: logger}
}

type adminRoute struct {
	method, path string
	handle       func(a *adminAPI, w http.ResponseWriter, r *http.Request) error
}

// adminRoutes is every route of the admin API; handler mounts exactly
// these, and openapi.json documents exactly these.
var adminRoutes = []adminRoute{
	{http.MethodGet, "/v1/openapi.json", (*adminAPI).openAPI},
	{http.MethodGet, "/v1/endpoints", (*adminAPI).listEndpoints},
	{http.MethodPost, "/v1/endpoints", (*adminAPI).addEndpoint},
	{http.MethodGet, "/v1/endpoints/{id}", (*adminAPI).showEndpoint},
	{http.MethodPatch, "/v1/endpoints/{id}", (*adminAPI).updateEndpoint},
	{http.MethodDelete, "/v1/endpoints/{id}", (*adminAPI).removeEndpoint},
	{http.MethodPost, "/v1/endpoints/{id}/enable", (*adminAPI).enableEndpoint},
	{http.MethodPost, "/v1/endpoints/{id}/disable", (*adminAPI).disableEndpoint},
	{http.MethodPost, "/v1/endpoints/{id}/rotate-secret", (*adminAPI).rotateSecret},
	{http.MethodGet, "/v1/deliveries", (*adminAPI).listDeliveries},
	{http.MethodGet, "/v1/deliveries/{id}", (*adminAPI).showDelivery},
	{http.MethodPost, "/v1/deliveries/replay", (*adminAPI).replayDeliveries},
}

// register mounts /v1/ on mux: every request is authenticated first, then
// routed.
func (a *adminAPI) register(mux *http.ServeMux) {
	v1 := http.NewServeMux()
	for _, rt := range adminRoutes {
		v1.HandleFunc(rt.method+" "+rt.path, func(w http.ResponseWriter, r *http.Request) {
			if err := rt.handle(a, w, r); err != nil {
				a.fail(w, r, err)
			}
		})
	}
	v1.HandleFunc("/v1/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such admin API route: see GET /v1/openapi.json")
	})
	mux.Handle("/v1/", a.authenticate(v1))
}

// authenticate lets a request through only with "Authorization: Bearer
// <GROUPHOOK_ADMIN_TOKEN>", compared in constant time.
func (a *adminAPI) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		got := sha256.Sum256([]byte(strings.TrimSpace(token)))
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(got[:], a.token[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="grouphook"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong bearer token: send Authorization: Bearer <GROUPHOOK_ADMIN_TOKEN>")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// apiError is a failed request with its status; its message is shown.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// fail answers err: input and lookup errors with their message, anything
// else as 500 with the details in the log only.
func (a *adminAPI) fail(w http.ResponseWriter, r *http.Request, err error) {
	var (
		ae *apiError
		ie *deliver.InputError
		nf *deliver.NotFoundError
	)
	switch {
	case errors.As(err, &ae):
		writeError(w, ae.status, ae.msg)
	case errors.As(err, &nf):
		writeError(w, http.StatusNotFound, nf.Error())
	case errors.As(err, &ie):
		writeError(w, http.StatusBadRequest, ie.Msg)
	case isUndefinedTable(err):
		writeError(w, http.StatusServiceUnavailable, "schema grouphook is out of date: run grouphook migrate")
	default:
		a.logger.Error("admin API request failed", "method", r.Method, "route", r.Pattern, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error; the grouphook log has the details")
	}
}

func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000" || pgErr.Code == "42703")
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeAdminJSON(w, status, map[string]string{"error": msg})
}

func writeAdminJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// decode reads a JSON object into v, refusing unknown fields, trailing
// data and bodies over maxAdminBody. An empty body is allowed when
// optional.
func decode(w http.ResponseWriter, r *http.Request, v any, optional bool) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxAdminBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &apiError{http.StatusRequestEntityTooLarge, fmt.Sprintf("the request body is larger than %d bytes", maxAdminBody)}
		}
		return badRequest("cannot read the request body")
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		if optional {
			return nil
		}
		return badRequest("the request needs a JSON object body")
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return badRequest("the body is not a valid request: %s", jsonProblem(err))
	}
	if dec.More() {
		return badRequest("the body has data after the JSON object")
	}
	return nil
}

// jsonProblem describes a decoding error without quoting values.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field == "" {
		return "the body must be a JSON object"
	}
	if errors.As(err, &te) {
		return fmt.Sprintf("field %s must be %s, not %s", te.Field, jsonType(te.Type.Kind().String()), te.Value)
	}
	return strings.TrimPrefix(err.Error(), "json: ")
}

func jsonType(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "bool":
		return "true or false"
	case "slice":
		return "an array"
	case "struct", "map":
		return "an object"
	}
	return "a number"
}

func pathID(r *http.Request, what string) (int64, error) {
	s := r.PathValue("id")
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, badRequest("%s id %q is not a positive whole number", what, clipText(s, 40))
	}
	return id, nil
}

func clipText(s string, n int) string {
	if len(s) > n {
		s = s[:n] + "…"
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

// --- endpoints

func (a *adminAPI) openAPI(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/json")
	_, err := w.Write(openAPIDocument)
	return err
}

// endpointWithSecret is the answer of add and rotate-secret: the only two
// answers that hold a secret.
type endpointWithSecret struct {
	Endpoint deliver.EndpointInfo `json:"endpoint"`
	Secret   string               `json:"secret"`
}

func (a *adminAPI) listEndpoints(w http.ResponseWriter, r *http.Request) error {
	var f deliver.EndpointFilter
	q := r.URL.Query()
	if q.Has("client_id") {
		c := q.Get("client_id")
		f.ClientID = &c
	}
	eps, err := deliver.ListEndpoints(r.Context(), a.db, f)
	if err != nil {
		return err
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"endpoints": eps})
	return nil
}

func (a *adminAPI) addEndpoint(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		URL         *string  `json:"url"`
		ClientID    *string  `json:"client_id"`
		Events      []string `json:"events"`
		IncludeData *bool    `json:"include_data"`
		Enabled     *bool    `json:"enabled"`
		Secret      *string  `json:"secret"`
	}
	if err := decode(w, r, &req, false); err != nil {
		return err
	}
	if req.URL == nil {
		return badRequest("url is missing: give the absolute http(s) URL to deliver to")
	}
	// events: absent or null means all three; [] is refused.
	ne := deliver.NewEndpoint{URL: *req.URL, ClientID: req.ClientID, Events: req.Events}
	ne.NoData = req.IncludeData != nil && !*req.IncludeData
	ne.Disabled = req.Enabled != nil && !*req.Enabled
	if req.Secret != nil {
		if *req.Secret == "" {
			return badRequest("secret is empty: leave it out to have one generated")
		}
		ne.Secret = *req.Secret
	}
	info, secret, err := deliver.AddEndpoint(r.Context(), a.db, ne)
	if err != nil {
		return err
	}
	a.logger.Info("endpoint added through the admin API", "endpoint", info.ID)
	w.Header().Set("Location", "/v1/endpoints/"+strconv.FormatInt(info.ID, 10))
	writeAdminJSON(w, http.StatusCreated, endpointWithSecret{Endpoint: info, Secret: secret})
	return nil
}

func (a *adminAPI) showEndpoint(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "endpoint")
	if err != nil {
		return err
	}
	info, err := deliver.GetEndpoint(r.Context(), a.db, id)
	if err != nil {
		return err
	}
	writeAdminJSON(w, http.StatusOK, info)
	return nil
}

func (a *adminAPI) updateEndpoint(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "endpoint")
	if err != nil {
		return err
	}
	var req struct {
		URL         *string         `json:"url"`
		ClientID    json.RawMessage `json:"client_id"` // absent: unchanged; null: every tenant
		Events      []string        `json:"events"`    // absent or null: unchanged
		IncludeData *bool           `json:"include_data"`
	}
	if err := decode(w, r, &req, false); err != nil {
		return err
	}
	u := deliver.EndpointUpdate{URL: req.URL, IncludeData: req.IncludeData, Events: req.Events}
	switch c := strings.TrimSpace(string(req.ClientID)); {
	case c == "":
	case c == "null":
		u.ClearClient = true
	default:
		var s string
		if err := json.Unmarshal(req.ClientID, &s); err != nil {
			return badRequest("client_id must be a string, or null for every tenant")
		}
		u.ClientID = &s
	}
	info, err := deliver.UpdateEndpoint(r.Context(), a.db, id, u)
	if err != nil {
		return err
	}
	a.logger.Info("endpoint updated through the admin API", "endpoint", id)
	writeAdminJSON(w, http.StatusOK, info)
	return nil
}

func (a *adminAPI) removeEndpoint(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "endpoint")
	if err != nil {
		return err
	}
	if err := deliver.RemoveEndpoint(r.Context(), a.db, id); err != nil {
		return err
	}
	a.logger.Info("endpoint removed through the admin API", "endpoint", id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *adminAPI) enableEndpoint(w http.ResponseWriter, r *http.Request) error {
	return a.setEnabled(w, r, true)
}

func (a *adminAPI) disableEndpoint(w http.ResponseWriter, r *http.Request) error {
	return a.setEnabled(w, r, false)
}

func (a *adminAPI) setEnabled(w http.ResponseWriter, r *http.Request, on bool) error {
	id, err := pathID(r, "endpoint")
	if err != nil {
		return err
	}
	info, err := deliver.SetEndpointEnabled(r.Context(), a.db, id, on)
	if err != nil {
		return err
	}
	a.logger.Info("endpoint enabled or disabled through the admin API", "endpoint", id, "enabled", on)
	writeAdminJSON(w, http.StatusOK, info)
	return nil
}

func (a *adminAPI) rotateSecret(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "endpoint")
	if err != nil {
		return err
	}
	var req struct {
		Secret  *string `json:"secret"`
		Overlap *string `json:"overlap"`
	}
	if err := decode(w, r, &req, true); err != nil {
		return err
	}
	overlap := a.overlap
	if req.Overlap != nil {
		if overlap, err = time.ParseDuration(*req.Overlap); err != nil {
			return badRequest("overlap %q is not a duration: use e.g. 24h, 30m or 0s", clipText(*req.Overlap, 40))
		}
	}
	secret := ""
	if req.Secret != nil {
		if *req.Secret == "" {
			return badRequest("secret is empty: leave it out to have one generated")
		}
		secret = *req.Secret
	}
	info, secret, err := deliver.RotateSecret(r.Context(), a.db, id, secret, overlap)
	if err != nil {
		return err
	}
	a.logger.Info("endpoint secret rotated through the admin API", "endpoint", id, "overlap", overlap.String())
	writeAdminJSON(w, http.StatusOK, endpointWithSecret{Endpoint: info, Secret: secret})
	return nil
}

// --- deliveries (the durable queue)

func (a *adminAPI) listDeliveries(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := deliver.ListFilter{Status: q.Get("status"), Limit: 100}
	if s := q.Get("endpoint_id"); s != "" {
		id, err := strconv.ParseInt(s, 10, 64)
		if err != nil || id <= 0 {
			return badRequest("endpoint_id %q is not a positive whole number", clipText(s, 40))
		}
		f.EndpointID = id
	}
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 1000 {
			return badRequest("limit %q is not a whole number from 1 to 1000", clipText(s, 40))
		}
		f.Limit = n
	}
	ds, err := deliver.ListDeliveries(r.Context(), a.db, f)
	if err != nil {
		return err
	}
	if ds == nil {
		ds = []deliver.Delivery{}
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"deliveries": ds})
	return nil
}

// attemptJSON is one failed attempt of a queued delivery, as the API and
// "grouphook deliveries show --json" print it.
type attemptJSON struct {
	AttemptedAt     time.Time `json:"attempted_at"`
	StatusCode      int       `json:"status_code,omitempty"`
	DurationSeconds *float64  `json:"duration_seconds,omitempty"`
	Error           string    `json:"error"`
	ResponseBody    string    `json:"response_body,omitempty"`
}

func (a *adminAPI) showDelivery(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, "delivery")
	if err != nil {
		return err
	}
	d, ev, attempts, err := deliver.GetDelivery(r.Context(), a.db, id)
	var ie *deliver.InputError
	if errors.As(err, &ie) { // the only one: it does not exist
		return &apiError{http.StatusNotFound, ie.Msg}
	}
	if err != nil {
		return err
	}
	out := struct {
		Delivery deliver.Delivery `json:"delivery"`
		Body     json.RawMessage  `json:"body"`
		Attempts []attemptJSON    `json:"attempts"`
	}{Delivery: d, Body: deliver.AppendBody(nil, &ev, true), Attempts: []attemptJSON{}}
	for _, at := range attempts {
		aj := attemptJSON{AttemptedAt: at.AttemptedAt, StatusCode: at.StatusCode, Error: at.Error,
			ResponseBody: strings.ToValidUTF8(string(at.ResponseBody), "\uFFFD")}
		if at.Duration != nil {
			s := at.Duration.Seconds()
			aj.DurationSeconds = &s
		}
		out.Attempts = append(out.Attempts, aj)
	}
	writeAdminJSON(w, http.StatusOK, out)
	return nil
}

func (a *adminAPI) replayDeliveries(w http.ResponseWriter, r *http.Request) error {
	var req struct {
		IDs        []int64 `json:"ids"`
		EndpointID int64   `json:"endpoint_id"`
		Since      *string `json:"since"`
	}
	if err := decode(w, r, &req, false); err != nil {
		return err
	}
	sel := deliver.ReplaySelector{IDs: req.IDs, EndpointID: req.EndpointID}
	if (len(req.IDs) == 0) == (req.EndpointID == 0) {
		return badRequest("give either ids (dead delivery ids) or endpoint_id")
	}
	if req.Since != nil {
		if req.EndpointID == 0 {
			return badRequest("since goes with endpoint_id, not with ids")
		}
		t, err := time.Parse(time.RFC3339Nano, *req.Since)
		if err != nil {
			return badRequest("since %q is not an RFC 3339 time such as 2026-05-01T12:00:00Z", clipText(*req.Since, 40))
		}
		sel.Since = t
	}
	res, err := deliver.ReplayDeliveries(r.Context(), a.db, sel)
	if err != nil {
		return err
	}
	a.logger.Info("dead deliveries replayed through the admin API", "replayed", res.Replayed)
	disabled := res.EndpointsDisabled
	if disabled == nil {
		disabled = []int64{}
	}
	writeAdminJSON(w, http.StatusOK, map[string]any{"replayed": res.Replayed, "endpoints_disabled": disabled})
	return nil
}
