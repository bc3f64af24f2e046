// Package edgelimit is edgelimit as a Traefik middleware plugin: the rate
// limits and quotas of the Caddy module (github.com/edgelimit/caddy-edgelimit),
// decided, counted and answered by the same code (packages limiter, policy
// and store), in memory or in a Redis shared with Caddy instances. This
// package is what is Traefik's: the configuration schema (config.go), the
// request's key sources and placeholders (keys.go, placeholders.go), the
// response path of limits that count responses (charge.go), the Redis
// client (resp.go, redis.go), the store registry (store.go), the webhook
// (notify.go) and the log (log.go).
//
// Traefik runs plugins from source in the Yaegi interpreter. This package
// and the packages it vendors import the standard library only, and avoid
// what Yaegi cannot run: the min, max and clear builtins, range over an
// integer or a function, generics (slices, maps, atomic.Pointer,
// sync.OnceValue). The test yaegi_safe_test.go checks the sources for
// them; the harness module (harness/) loads the plugin through Yaegi as
// Traefik does.
package edgelimit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/edgelimit/caddy-edgelimit/httpval"
	"github.com/edgelimit/caddy-edgelimit/policy"
	"github.com/edgelimit/caddy-edgelimit/store"
)

// middleware is one configured instance.
type middleware struct {
	next   http.Handler
	name   string
	pol    *policy.Policy
	limits []*compiledLimit // the policy's, with their key sources
	// allKeys: credentials, tiers or a source of the plugin's own kinds,
	// which serveOne does not read.
	allKeys bool
	store   store.Store
	// one is the memory store of a middleware of one limit that
	// policy.One decides (serveOne), nil otherwise.
	one *store.Memory
	// oneKeys are that limit's key sources; oneCreds: one of them is a
	// credential header (Authorization or Proxy-Authorization), which
	// serveOne leaves to httpval.First.
	oneKeys  []httpval.Part
	oneCreds bool
	now      func() time.Time // the clock: time.Now, or the configured one
	// clock is it as held requests and the merges of limits with sync
	// wait on it.
	clock  store.SyncClock
	ips    *httpval.Forwarded
	creds  *credentials
	notify *policy.Notifier
	log    *logger
	// decisions are the decisions of requests served, to use again.
	decisions sync.Pool
	// charges: some limit counts responses (charge.go).
	charges bool
}

// New builds the middleware from its configuration.
func New(ctx context.Context, next http.Handler, config *Config, name string) (http.Handler, error) {
	if config == nil {
		config = CreateConfig()
	}
	m, err := newMiddleware(next, config, name)
	if err != nil {
		return nil, fmt.Errorf("edgelimit %s: %w", name, err)
	}
	return m, nil
}

func newMiddleware(next http.Handler, config *Config, name string) (*middleware, error) {
	if err := config.checkUnknown(); err != nil {
		return nil, err
	}
	m := &middleware{next: next, name: name, now: config.Now, log: newLogger(name)}
	if m.now == nil {
		m.now = time.Now
	}
	m.clock = &syncClock{m.now}
	var err error
	if m.ips, err = compileIPStrategy(config.IPStrategy); err != nil {
		return nil, fmt.Errorf("ipStrategy: %w", err)
	}
	if m.creds, err = compileCredentials(config.Credentials); err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	if m.notify, err = compileNotify(config.Notify, name); err != nil {
		return nil, fmt.Errorf("notify: %w", err)
	}
	if err := m.compileLimits(config); err != nil {
		return nil, err
	}
	limits := make([]*policy.Limit, len(m.limits))
	for i, l := range m.limits {
		limits[i] = l.Limit
		m.allKeys = m.allKeys || m.creds != nil || l.tierSrc != nil || l.ownSources
	}
	m.pol, err = policy.New(limits, &policy.Responses{
		Status: config.Status, Headers: config.Headers, TimeHeader: config.TimeHeader, DryRun: config.DryRun,
		Body: config.Body, ContentType: config.ContentType, ShowKey: config.ShowKey, KeySecret: config.KeySecret,
	})
	if err != nil {
		return nil, err
	}
	m.charges = m.pol.Charges
	if m.store, err = openStore(config.Storage, config.Now != nil); err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	for _, l := range limits {
		if l.Sync > 0 {
			// Its merges end once no request meets its views: a
			// middleware Traefik replaced leaves nothing running.
			m.store = store.WithSync(m.store, m.clock)
			break
		}
	}
	if mem, ok := m.store.(*store.Memory); ok && m.pol.One && !m.allKeys {
		m.one = mem
		m.oneKeys = m.limits[0].keys
		for _, s := range m.oneKeys {
			if s.Kind == httpval.KindHeader && (s.Name == "Authorization" || s.Name == "Proxy-Authorization") {
				m.oneCreds = true
			}
		}
	}
	return m, nil
}

// compileLimits compiles the limits, in the order of their names: they are
// decided, reported and tie-broken so on every instance.
func (m *middleware) compileLimits(c *Config) error {
	if len(c.Limits) == 0 {
		return errors.New("no limits: give at least one under limits")
	}
	for _, name := range sortedLimits(c.Limits) {
		l := c.Limits[name]
		if l == nil {
			return fmt.Errorf("limit %q has no settings", name)
		}
		cl, err := compileLimit(name, l, m.name)
		if err != nil {
			return fmt.Errorf("limit %q: %w", name, err)
		}
		warnPrivileges(m.log, cl)
		if cl.usesCredentials() && m.creds == nil {
			return fmt.Errorf("limit %q: the credential source needs credentials", name)
		}
		m.limits = append(m.limits, cl)
	}
	return nil
}

// ServeHTTP reads the request's keys, and has the policy decide and
// answer. Under Yaegi a call costs for every value of its function, run or
// not, and a method call four times a function's: the request path is a
// few plain functions, and what is rare (exemptions, tiers, a denial) is
// in functions of its own.
func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if m.charges {
		serveCharging(m, w, r)
		return
	}
	// A decision is made once and used again: the ledger of the
	// request's state holds its requests until the next handler returns
	// (serveCharging keeps its own for the response).
	d, _ := m.decisions.Get().(*policy.Decision)
	if d == nil {
		d = policy.NewDecision(m.pol)
	}
	if m.one != nil {
		r = serveOne(m, w, r, d)
	} else {
		r = serve(m, w, r, d)
	}
	if r != nil {
		m.next.ServeHTTP(w, r)
	}
	m.decisions.Put(d)
}

// serve decides the request in d (a new decision), with the core's flow
// (policy.Decide, policy.Settle) given the request's state: the earlier
// edgelimit middlewares' exemptions and ledger, where this one records (a
// new state when this one is the first). It returns the request to pass
// on (with the state, when this one started it), or nil when it answered.
func serve(m *middleware, w http.ResponseWriter, r *http.Request, d *policy.Decision) *http.Request {
	if !readKeys(m, r, d) {
		return r
	}
	ctx := r.Context()
	st, _ := ctx.Value(stateCtxKey).(*requestState)
	f := &policy.Flow{Clock: m.clock}
	if st == nil {
		st = new(requestState)
	} else {
		f.Exempt = st.exempt
		f.Earlier = &st.ledger
	}
	f.Ledger = &st.ledger
	now := m.now()
	o := policy.Decide(m.pol, m.store, ctx, now, d, f)
	if o == policy.Decided {
		o = policy.Settle(m.pol, m.store, ctx, now, w.Header(), d, f)
	}
	if f.Added {
		st.exempt = f.Exempt
	}
	if (o != policy.Pass || d.Denied > 0) && !answer(m, w, r, d, f, o, now) {
		return nil
	}
	if f.Earlier == nil && (o == policy.Pass || f.Added) {
		r = r.WithContext(context.WithValue(ctx, stateCtxKey, st))
	}
	return r
}

// serveOne is serve for a middleware of one limit in memory that
// policy.One decides. Its key is read here (readKeys for one limit whose
// sources are all the core's: no credentials, tiers or sources of the
// plugin's own kinds), and a header without space around it, not a
// credential, is httpval.First's, written out: calls less.
func serveOne(m *middleware, w http.ResponseWriter, r *http.Request, d *policy.Decision) *http.Request {
	keys := m.oneKeys
	v := ""
	for j := range keys {
		s := &keys[j]
		if s.Kind != httpval.KindHeader {
			v = httpval.Value(s, r, m.ips)
		} else if vs := r.Header[s.Name]; len(vs) != 0 {
			// v is "" here: a key read ends the loop.
			v = vs[0]
			if m.oneCreds || v == "" || v[0] <= ' ' || v[len(v)-1] <= ' ' {
				v = httpval.First(r.Header, s.Name)
			}
		}
		if v != "" {
			d.Keys[0] = v
			d.Parts[0] = j
			break
		}
	}
	if v == "" {
		d.Parts[0] = -1
		return r
	}
	ctx := r.Context()
	st, _ := ctx.Value(stateCtxKey).(*requestState)
	if st != nil {
		// A middleware before this one decided the request: serve reads
		// the key again (rare).
		return serve(m, w, r, d)
	}
	now := m.now()
	st = new(requestState)
	if !policy.One(m.pol, d, m.one, now.UnixMicro(), w.Header(), &st.ledger) {
		return judgedOne(m, w, r, d, now)
	}
	return r.WithContext(context.WithValue(ctx, stateCtxKey, st))
}

// judgedOne settles a request that policy.One did not pass (the first
// edgelimit middleware of the request: no exemptions, no waits).
func judgedOne(m *middleware, w http.ResponseWriter, r *http.Request, d *policy.Decision, now time.Time) *http.Request {
	st := new(requestState)
	f := &policy.Flow{Ledger: &st.ledger}
	o := policy.Settle(m.pol, m.store, r.Context(), now, w.Header(), d, f)
	if !answer(m, w, r, d, f, o, now) {
		return nil
	}
	return r.WithContext(context.WithValue(r.Context(), stateCtxKey, st))
}

// answer acts on what the core made of a request (o, f) but a plain pass:
// it logs a storage failure and what could not be given back, reports the
// first denials, and answers a denial or a storage that cannot decide
// (503, Retry-After: 1); it tells whether the request goes on.
func answer(m *middleware, w http.ResponseWriter, r *http.Request, d *policy.Decision, f *policy.Flow, o policy.Outcome, now time.Time) bool {
	if o == policy.Failed || o == policy.Unavailable {
		m.log.warnf("rate-limit storage failed: %v", f.Err)
	}
	if o > policy.Decided && d.Denied > 0 {
		m.firstDenials(r, d, now)
	}
	if f.RefundErr != nil {
		if o == policy.Left {
			m.log.warnf("giving back the counts of a request that left while held: %v", f.RefundErr)
		} else {
			m.log.warnf("giving back the counts of a denied request: %v", f.RefundErr)
		}
	}
	switch o {
	case policy.Deny:
		m.pol.Denial(d, f.Denied).Write(w, r.Method, &placeholders{r: r, ips: m.ips}, nil)
		return false
	case policy.Unavailable:
		m.pol.WriteUnavailable(w, r.Method)
		return false
	}
	return o != policy.Left
}

// readKeys reads each limit's key (and tier) into d, and tells whether any
// key is present: the first present source of each limit. A header without
// space around it, not a credential, is httpval.First's, written out: calls
// less.
func readKeys(m *middleware, r *http.Request, d *policy.Decision) bool {
	var cred *Client
	if m.creds != nil {
		cred = m.creds.lookup(r)
	}
	present := false
	for i, l := range m.limits {
		d.Parts[i] = -1
		for j := range l.keys {
			s := &l.keys[j]
			v := ""
			if s.Kind >= httpval.KindEdge {
				v = value(s, r, cred)
			} else if s.Kind != httpval.KindHeader {
				v = httpval.Value(s, r, m.ips)
			} else if vs := r.Header[s.Name]; len(vs) != 0 {
				v = vs[0]
				if v == "" || v[0] <= ' ' || v[len(v)-1] <= ' ' || s.Name[0] == 'A' || s.Name[0] == 'P' {
					v = httpval.First(r.Header, s.Name)
				}
			}
			if v != "" {
				d.Keys[i] = v
				d.Parts[i] = j
				present = true
				break
			}
		}
		if l.tierSrc != nil {
			d.TierValues[i] = tier(l.tierSrc, r, cred)
		}
	}
	return present
}

// firstDenials logs and notifies the first denials of the decision.
func (m *middleware) firstDenials(r *http.Request, d *policy.Decision, now time.Time) {
	for j := range d.Res {
		if res := &d.Res[j]; res.FirstDenial {
			key := m.pol.DisplayKey(d.Reqs[j].Key)
			m.log.firstDenial(d.Meta[j].Limit.Name, key, d.Meta[j].Tier, res, d.Reqs[j].DryRun)
			if m.notify != nil {
				m.notify.Exceeded(now, m.pol.EventData(d, j, policy.Request{ClientIP: httpval.ClientIP(m.ips, r), Host: r.Host, Path: r.URL.Path}))
			}
		}
	}
}

// stateKey is the context key of the requestState that the edgelimit
// middlewares of one request share; stateCtxKey is it as the context
// functions take it (under Yaegi, a value made once rather than on every
// request).
type stateKey struct{}

var stateCtxKey any = stateKey{}

// requestState is what the edgelimit middlewares of one request share:
// the exemptions granted so far, and what each counted (so that a denial
// by a later one gives it back: a denied request consumes nothing).
type requestState struct {
	exempt []string
	ledger policy.Ledger
}

// syncClock is the clock that held requests and the merges of limits with
// sync wait on: real time, and the decisions' clock (a test's) for the
// views and the refunds of held requests whose client left.
type syncClock struct{ now func() time.Time }

func (c syncClock) Now() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

func (c syncClock) Sleep(ctx context.Context, d time.Duration) error { return store.Sleep(ctx, d) }
