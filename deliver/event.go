package deliver

import "time"

// Event is one row change to deliver. It is what cdc produced, in HTTP
// terms: deliver never sees WAL positions, only the id derived from them.
type Event struct {
	// ID is stable across retries, restarts and replays; sent as webhook-id.
	ID string
	// Type is CREATE, UPDATE or DELETE.
	Type string
	// Table is "schema.table".
	Table      string
	OccurredAt time.Time // commit time
	// Row, Key and Previous are compact JSON objects (Previous may be nil).
	// Row is sent as "group" to endpoints with include_data; Key otherwise.
	Row, Key, Previous []byte
	// Tenant routes the event: endpoints with a client_id get it only when
	// it equals Tenant (and TenantNull is false).
	Tenant     string
	TenantNull bool
	// GroupKey orders deliveries: one endpoint gets the events of one group
	// in the order they were submitted.
	GroupKey string
}
