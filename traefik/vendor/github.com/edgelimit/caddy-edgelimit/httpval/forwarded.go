package httpval

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Forwarded finds the client's address in X-Forwarded-For, as Traefik's
// ipStrategy does (the Traefik plugin's ipStrategy). Without a depth or
// excluded ranges the remote address is the client: a header the client
// can write is never trusted by default.
type Forwarded struct {
	depth    int
	excluded []netip.Prefix
}

// NewForwarded trusts X-Forwarded-For as far as depth (the depth-th
// address from the right, 1 the one the nearest proxy added) or, without a
// depth, past the proxies in excluded (addresses or CIDR ranges: the
// client is the rightmost address not in them).
func NewForwarded(depth int, excluded []string) (*Forwarded, error) {
	if depth < 0 {
		return nil, fmt.Errorf("depth %d must not be negative", depth)
	}
	s := &Forwarded{depth: depth}
	for _, e := range excluded {
		e = strings.TrimSpace(e)
		if p, err := netip.ParsePrefix(e); err == nil {
			s.excluded = append(s.excluded, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(e)
		if err != nil {
			return nil, fmt.Errorf("excludedIPs: %q is neither an address nor a CIDR range", e)
		}
		s.excluded = append(s.excluded, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return s, nil
}

// ClientIP is the client's address: from X-Forwarded-For only as s trusts
// it (nil trusts nothing), else the remote address. It is never empty for
// a request with a remote address, so a client cannot escape a limit by
// sending a short or malformed header.
func ClientIP(s *Forwarded, r *http.Request) string {
	if s == nil || s.depth == 0 && len(s.excluded) == 0 {
		return RemoteIP(r)
	}
	return s.forwarded(r)
}

// forwarded is ClientIP from X-Forwarded-For.
func (s *Forwarded) forwarded(r *http.Request) string {
	xff := forwardedFor(r.Header)
	if s.depth > 0 {
		if s.depth <= len(xff) {
			if ip := IP(xff[len(xff)-s.depth]); ip != "" {
				return ip
			}
		}
		return RemoteIP(r)
	}
	for i := len(xff) - 1; i >= 0; i-- {
		ip := IP(xff[i])
		if ip == "" {
			break
		}
		if !s.isExcluded(netip.MustParseAddr(ip)) {
			return ip
		}
	}
	return RemoteIP(r)
}

func (s *Forwarded) isExcluded(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range s.excluded {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// forwardedFor lists the addresses of every X-Forwarded-For line, in order.
func forwardedFor(h http.Header) []string {
	var out []string
	for _, line := range h.Values("X-Forwarded-For") {
		for _, part := range strings.Split(line, ",") {
			if part = strings.TrimSpace(part); part != "" {
				out = append(out, part)
			}
		}
	}
	return out
}

// RemoteIP is the remote address's IP as Caddy writes its client_ip:
// parsed, without zone or port.
func RemoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if ip := IP(host); ip != "" {
		return ip
	}
	return host
}
