package httpval

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
)

// Part is where both edges read a key (or a tier) of a request: each edge
// parses its own grammar into Parts (Caddy's placeholders, the Traefik
// plugin's sources) and reads them with Value, so that the same part
// makes the same key, and the same counter in a fleet of both.
type Part struct {
	Kind Kind
	// Name is the header's name (canonical) or the constant's text; an
	// edge's own kinds use it as they please.
	Name string
	// V6 is the length of the IPv6 prefix that a key of an address counts
	// as one client (ClientKey).
	V6 int
}

// Kind is what a Part reads. The kinds from KindEdge on are an edge's own
// (Caddy's templates, the plugin's bearer token and credentials): the
// edge reads them itself, and Value reads none.
type Kind uint8

// The kinds of a Part. A bare iota or a literal only: Yaegi compares
// against typed constant expressions wrongly.
const (
	_ Kind = iota
	// KindHeader is the first value of header Name, trimmed (First).
	KindHeader
	// KindClient is the client's address (ClientIP), as a key (ClientKey).
	// Caddy reads the address it found itself (its client_ip).
	KindClient
	// KindRemote is the address of the connection's peer, as a key.
	KindRemote
	// KindBasicUser is the user that Basic credentials claim (BasicUser).
	KindBasicUser
	// KindConst is Name: one key that every request shares.
	KindConst
	// KindQuery is the first value of query parameter Name (what an
	// upstream reads with Query().Get): repeating it makes no new key.
	KindQuery
	// KindCookie is the value of the first cookie named Name exactly
	// (Request.Cookie): the cookie an upstream reads. Not Caddy's cookie
	// placeholder, which matches the name in any case, so that a client
	// sending SESSION=<new> before its real session=<id> would count as a
	// new client on every request.
	KindCookie
)

// KindEdge is the first of the kinds an edge reads itself.
const KindEdge Kind = 16

// Value is the part's value for r ("" when it is absent): the client's
// address found as ips trusts X-Forwarded-For (nil: the remote address).
// The usual parts, a header and the client's address, are read without a
// call more (the plugin runs this in an interpreter).
func Value(p *Part, r *http.Request, ips *Forwarded) string {
	switch p.Kind {
	case KindHeader:
		return First(r.Header, p.Name)
	case KindClient:
		if ips == nil {
			// ClientIP's remote address, unparsed: the same key.
			return ClientKey(RemoteHost(r), p.V6)
		}
		return ClientKey(ClientIP(ips, r), p.V6)
	}
	return otherValue(p, r)
}

// otherValue is Value for the other kinds.
func otherValue(p *Part, r *http.Request) string {
	switch p.Kind {
	case KindRemote:
		return ClientKey(RemoteHost(r), p.V6)
	case KindBasicUser:
		return BasicUser(r.Header)
	case KindConst:
		return p.Name
	case KindQuery:
		return r.URL.Query().Get(p.Name)
	case KindCookie:
		if c, err := r.Cookie(p.Name); err == nil {
			return c.Value
		}
	}
	return ""
}

// FromClient names a part whose value the client sends as it likes (a
// header, a query parameter, a cookie, the user Basic credentials claim
// before the password is checked): a key that any client can make up, no
// ground for a privilege. Both edges warn of a limit that exempts others
// keyed so.
func FromClient(p *Part) (string, bool) {
	switch p.Kind {
	case KindHeader:
		return "header " + p.Name, true
	case KindQuery:
		return "query parameter " + p.Name, true
	case KindCookie:
		return "cookie " + p.Name, true
	case KindBasicUser:
		return "the user Basic credentials claim, password unchecked", true
	}
	return "", false
}

// CheckName refuses a part whose name no request can carry, which would
// make a key that never applies, silently: a header's or a cookie's name
// that is not a token (RFC 9110: no space, no separator such as ';', '='
// or ',', no control byte), an empty query parameter's name.
func CheckName(p *Part) error {
	switch p.Kind {
	case KindHeader, KindCookie:
		if p.Name == "" {
			return errors.New("no name")
		}
		for i := 0; i < len(p.Name); i++ {
			c := p.Name[i]
			if c <= ' ' || c >= 0x7f || strings.IndexByte("\"(),/:;<=>?@[\\]{}", c) >= 0 {
				return fmt.Errorf("name %q: %q is not allowed in a header's or a cookie's name", p.Name, string(c))
			}
		}
	case KindQuery:
		if p.Name == "" {
			return errors.New("no name")
		}
	}
	return nil
}

// RemoteHost is the host of the remote address, as it is written (a key
// of it, ClientKey, reads an IPv6 address; an IPv4 one is its own key, so
// it is not parsed).
func RemoteHost(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
