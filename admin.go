package edgelimit

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgelimit/caddy-edgelimit/internal/clock"
	"github.com/edgelimit/caddy-edgelimit/storage"
	"github.com/edgelimit/caddy-edgelimit/store"
)

func init() {
	caddy.RegisterModule(Admin{})
}

// Admin serves the edge_limit routes of Caddy's admin API: an operator
// looks at one client's counters, resets them or credits units, without a
// reload, for the memory and the Redis store alike.
//
//	GET  /edge_limit/limits   the running configuration's limits
//	POST /edge_limit/inspect  {"limit", "zone", "key", "part", "tier"}
//	POST /edge_limit/reset    {"limit" (omit: every limit), "zone", "key", "part"}
//	POST /edge_limit/credit   {"limit", "zone", "key", "part", "units"}
//
// "key" is the client's key as the limit reads it from a request: the raw
// header value, the IP address, the user id. A limit whose key has several
// parts ({header.Authorization} {client_ip}) keeps one counter per part:
// without "part" every part's counter for that value is answered (or reset,
// or credited); "part" (0-based) names one.
type Admin struct{}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.edge_limit",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Routes implements caddy.AdminRouter.
func (Admin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/edge_limit/limits", Handler: caddy.AdminHandlerFunc(handleLimits)},
		{Pattern: "/edge_limit/inspect", Handler: caddy.AdminHandlerFunc(handleInspect)},
		{Pattern: "/edge_limit/reset", Handler: caddy.AdminHandlerFunc(handleReset)},
		{Pattern: "/edge_limit/credit", Handler: caddy.AdminHandlerFunc(handleCredit)},
	}
}

// registry lists the compiled limits of one configuration and the store
// that counts each; the running configuration's is liveRegistry.
type registry struct {
	mu      sync.Mutex
	entries []*adminEntry
}

// adminEntry is one counted limit: the same limit counted by two stores
// (a handler with storage of its own) is two entries.
type adminEntry struct {
	cl    *compiledLimit
	store store.Store
	clock clock.Clock
	// label names the store, unique in the registry: its kind (memory,
	// redis), where a Redis store keeps its counts, and a number when two
	// stores would read alike.
	label string
}

var liveRegistry atomic.Pointer[registry]

// started are the registries of the apps started and not yet stopped, in
// the order they started; the last is liveRegistry.
var started struct {
	mu   sync.Mutex
	regs []*registry
}

func startRegistry(r *registry) {
	started.mu.Lock()
	defer started.mu.Unlock()
	started.regs = append(started.regs, r)
	liveRegistry.Store(r)
}

func stopRegistry(r *registry) {
	started.mu.Lock()
	defer started.mu.Unlock()
	for i, s := range started.regs {
		if s == r {
			started.regs = append(started.regs[:i], started.regs[i+1:]...)
			break
		}
	}
	var live *registry
	if n := len(started.regs); n > 0 {
		live = started.regs[n-1]
	}
	liveRegistry.Store(live)
}

// add records a limit counted by store, once.
func (r *registry) add(cl *compiledLimit, store store.Store, c clock.Clock) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.entries {
		if e.store == store && e.cl.Counters[0] == cl.Counters[0] {
			return
		}
	}
	r.entries = append(r.entries, &adminEntry{cl: cl, store: store, clock: c, label: r.label(store)})
}

// label is the label of store: the one it has, or a new one that no other
// store of the registry has.
func (r *registry) label(s store.Store) string {
	base := storageName(s)
	if rs, ok := s.(*storage.Redis); ok && rs.Name() != "" {
		base += " " + rs.Name()
	}
	taken := map[string]bool{}
	for _, e := range r.entries {
		if e.store == s {
			return e.label
		}
		taken[e.label] = true
	}
	label := base
	for n := 2; taken[label]; n++ {
		label = base + " #" + strconv.Itoa(n)
	}
	return label
}

func (r *registry) list() []*adminEntry {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*adminEntry(nil), r.entries...)
}

// Bounds on what the admin routes read.
const (
	maxAdminBody = 128 << 10
	// maxAdminKey bounds a key: far more than any header a server
	// accepts by default, far less than would cost to hash.
	maxAdminKey = 64 << 10
)

func apiError(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

func onlyMethod(w http.ResponseWriter, r *http.Request, method string) error {
	if r.Method == method {
		return nil
	}
	w.Header().Set("Allow", method)
	return apiError(http.StatusMethodNotAllowed, "method %s not allowed here: use %s", r.Method, method)
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// LimitInfo describes one limit of the running configuration.
var _ caddy.AdminRouter = Admin{}
