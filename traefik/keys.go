package edgelimit

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"strings"

	"github.com/edgelimit/caddy-edgelimit/httpval"
	"github.com/edgelimit/caddy-edgelimit/policy"
)

// compiledLimit is a Limit ready for the request path: the shared core's
// limit (package policy), and where the plugin reads its keys and tier.
type compiledLimit struct {
	*policy.Limit
	keys    []httpval.Part
	tierSrc *httpval.Part
	// ownSources: a key source of the plugin's own kinds (bearer,
	// credential), which httpval.Value does not read.
	ownSources bool
}

// compileLimit checks a limit and prepares it. Its counters are named as
// the Caddy module names a global limit's ("g/<name>/<algorithm>#<source
// index>"), so that a Caddy instance whose global limit of the same name
// has the same algorithm and key sources in the same order shares them
// through Redis; a middleware-scoped limit's are "m/<middleware>/...".
func compileLimit(name string, l *Limit, middleware string) (*compiledLimit, error) {
	keys := l.Key
	if len(keys) == 0 {
		keys = []string{"ip"}
	}
	var scope string
	switch l.Scope {
	case "", "global":
		scope = "g"
	case "middleware":
		scope = "m/" + middleware
	default:
		return nil, fmt.Errorf("scope %q: want global or middleware", l.Scope)
	}
	numbers, err := l.numbers()
	if err != nil {
		return nil, err
	}
	spec := &policy.Spec{Name: name, Keys: len(keys), Numbers: *numbers, Tiered: l.Tier != "", DefaultTier: l.DefaultTier,
		Cost: l.Cost, IPv6Prefix: l.IPv6Prefix, Exempt: l.Exempt, Status: l.Status, Body: l.Body, DryRun: l.DryRun,
		CostHeader: l.CostHeader, KeepCostHeader: l.KeepCostHeader}
	responses, err := compileResponses(l.CountResponses)
	if err != nil {
		return nil, fmt.Errorf("countResponses: %w", err)
	}
	if responses != nil {
		// Not a nil *ResponseRule in the interface: a limit without a
		// rule counts every response.
		spec.Charged = true
		spec.Responses = responses
	}
	if spec.Ban, err = parseDuration("ban", l.Ban); err != nil {
		return nil, err
	}
	if l.Ban != "" {
		if err := policy.CheckBan(spec.Ban); err != nil {
			return nil, err
		}
	}
	if spec.Wait, err = parseDuration("wait", l.Wait); err != nil {
		return nil, err
	}
	if l.Wait != "" {
		if err := policy.CheckWait(spec.Wait); err != nil {
			return nil, err
		}
	}
	spec.WaitMax = l.WaitMax
	if spec.Sync, err = parseDuration("sync", l.Sync); err != nil {
		return nil, err
	}
	spec.Tiers = make(map[string]*policy.Numbers, len(l.Tiers))
	for tier, n := range l.Tiers {
		t, err := n.spec()
		if err != nil {
			return nil, fmt.Errorf("tier %q: %w", tier, err)
		}
		spec.Tiers[tier] = t
	}
	cl := &compiledLimit{}
	if cl.Limit, err = policy.Compile(spec, scope); err != nil {
		return nil, err
	}
	if l.Tier != "" {
		src, err := parseSource(l.Tier, true)
		if err != nil {
			return nil, fmt.Errorf("tier %q: %w", l.Tier, err)
		}
		cl.tierSrc = &src
	}
	for _, k := range keys {
		src, err := parseSource(k, false)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		src.V6 = cl.IPv6Prefix
		cl.keys = append(cl.keys, src)
		cl.ownSources = cl.ownSources || src.Kind >= httpval.KindEdge
	}
	return cl, nil
}

// usesCredentials tells whether a key or tier source is "credential".
func (cl *compiledLimit) usesCredentials() bool {
	for _, k := range cl.keys {
		if k.Kind == srcCredential {
			return true
		}
	}
	return cl.tierSrc != nil && cl.tierSrc.Kind == srcCredential
}

// A source is where a key, a tier or a credential is read from: the
// core's httpval.Part, read with httpval.Value, or one of the plugin's own
// kinds, read with value.
const (
	srcBearer     httpval.Kind = 16 // httpval.KindEdge; literals: see TestYaegiSafe
	srcCredential httpval.Kind = 17
)

// parseSource reads a source: header:<Name>, query:<name>, cookie:<name>,
// ip, remote, bearer, credential, basic-user, const:<text>. A tier source
// is a header or credential: a privilege comes from authenticated input
// only.
func parseSource(s string, tier bool) (httpval.Part, error) {
	s = strings.TrimSpace(s)
	kind, arg, hasArg := strings.Cut(s, ":")
	kind = strings.ToLower(kind)
	if kind != "const" {
		// "query: key" names the parameter key.
		arg = strings.TrimSpace(arg)
	}
	var src httpval.Part
	switch kind {
	case "header":
		src = httpval.Part{Kind: httpval.KindHeader, Name: textproto.CanonicalMIMEHeaderKey(arg)}
	case "query":
		src = httpval.Part{Kind: httpval.KindQuery, Name: arg}
	case "cookie":
		src = httpval.Part{Kind: httpval.KindCookie, Name: arg}
	case "const":
		src = httpval.Part{Kind: httpval.KindConst, Name: arg}
	case "ip":
		src = httpval.Part{Kind: httpval.KindClient}
	case "remote":
		src = httpval.Part{Kind: httpval.KindRemote}
	case "bearer":
		src = httpval.Part{Kind: srcBearer}
	case "credential":
		src = httpval.Part{Kind: srcCredential}
	case "basic-user":
		src = httpval.Part{Kind: httpval.KindBasicUser}
	default:
		return src, fmt.Errorf("unknown source %q: want header:<Name>, query:<name>, cookie:<name>, ip, remote, bearer, credential, basic-user or const:<text>", s)
	}
	needsArg := src.Kind == httpval.KindHeader || src.Kind == httpval.KindQuery || src.Kind == httpval.KindCookie || src.Kind == httpval.KindConst
	if needsArg && strings.TrimSpace(arg) == "" {
		return src, fmt.Errorf("source %q needs a name after the colon", s)
	}
	if err := httpval.CheckName(&src); err != nil {
		return src, fmt.Errorf("source %q: %w", s, err)
	}
	if !needsArg && hasArg {
		return src, fmt.Errorf("source %q takes no argument", s)
	}
	if tier && src.Kind != httpval.KindHeader && src.Kind != srcCredential {
		return src, errors.New("a tier is a privilege: read it from a header set by forwardAuth (header:<Name>) or from known credentials (credential)")
	}
	return src, nil
}

// warnPrivileges warns, as the Caddy module does, of a limit that exempts
// others keyed on what a client sends as it likes: any client could skip
// those limits with a made-up value (a tier from such a source is refused
// outright, parseSource).
func warnPrivileges(log *logger, l *compiledLimit) {
	if len(l.Exempt) == 0 {
		return
	}
	for i := range l.keys {
		s := &l.keys[i]
		from, ok := httpval.FromClient(s)
		if s.Kind == srcBearer {
			from, ok = "bearer, unchecked", true
		}
		if !ok {
			continue
		}
		log.Print(fmt.Sprintf("limit %q exempts %v but is keyed on what a client sends (%s): any client could skip those limits with a made-up value; key it on credentials, or a header forwardAuth sets",
			l.Name, l.Exempt, from))
		return
	}
}

// value is the value of a source of the plugin's own kinds for r. The
// core's kinds (a query parameter and a cookie among them) are
// httpval.Value's, read without this call.
func value(s *httpval.Part, r *http.Request, cred *Client) string {
	switch s.Kind {
	case srcBearer:
		// Authorization as the key of a header reads it: trimmed, its
		// scheme written one way.
		if v, ok := strings.CutPrefix(httpval.First(r.Header, "Authorization"), "Bearer "); ok {
			return v
		}
		return ""
	case srcCredential:
		if cred == nil {
			return ""
		}
		return cred.ID
	}
	return ""
}

// tier is a tier source's value: a header's as the Caddy module reads a
// tier placeholder's (httpval.First: its first value, trimmed), so that a
// client of a fleet of both is in one tier at either edge.
func tier(s *httpval.Part, r *http.Request, cred *Client) string {
	if s.Kind == srcCredential {
		if cred == nil {
			return ""
		}
		return cred.Tier
	}
	return httpval.First(r.Header, s.Name)
}

// compileIPStrategy reads an IPStrategy; nil trusts no X-Forwarded-For.
func compileIPStrategy(c *IPStrategy) (*httpval.Forwarded, error) {
	if c == nil {
		return nil, nil
	}
	return httpval.NewForwarded(c.Depth, c.ExcludedIPs)
}

// credentials is a compiled Credentials map.
type credentials struct {
	from    httpval.Part
	clients map[string]*Client
}

func compileCredentials(c *Credentials) (*credentials, error) {
	if c == nil {
		return nil, nil
	}
	from, err := parseSource(c.From, false)
	if err != nil {
		return nil, fmt.Errorf("from: %w", err)
	}
	switch from.Kind {
	case httpval.KindHeader, httpval.KindQuery, httpval.KindCookie, srcBearer:
	default:
		return nil, fmt.Errorf("from %q: want header:<Name>, query:<name>, cookie:<name> or bearer", c.From)
	}
	if len(c.Clients) == 0 {
		return nil, errors.New("no clients")
	}
	out := &credentials{from: from, clients: make(map[string]*Client, len(c.Clients))}
	for cred, cl := range c.Clients {
		if cred == "" {
			return nil, errors.New("an empty credential")
		}
		var k Client
		if cl != nil {
			k = *cl
		}
		if k.ID == "" {
			k.ID = cred
		}
		if from.Kind == httpval.KindHeader && (from.Name == "Authorization" || from.Name == "Proxy-Authorization") {
			cred = httpval.Credentials(httpval.Trim(cred))
		}
		if _, dup := out.clients[cred]; dup {
			// Two spellings of one credential: which client it stands for
			// would depend on the map's order.
			return nil, errors.New("clients: two credentials are one credential spelled twice")
		}
		out.clients[cred] = &k
	}
	return out, nil
}

// lookup returns the known client of the request's credential, or nil.
func (c *credentials) lookup(r *http.Request) *Client {
	var v string
	if c.from.Kind < httpval.KindEdge {
		v = httpval.Value(&c.from, r, nil)
	} else {
		v = value(&c.from, r, nil)
	}
	if v == "" {
		return nil
	}
	return c.clients[v]
}
