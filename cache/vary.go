package cache

import (
	"crypto/sha256"
	"net/http"
	"strconv"
	"strings"

	"github.com/edgelimit/caddy-edgelimit/httpval"
)

// Variants. A response with Vary is stored under a key of its own, the
// variant's (VariantKey: the URL's key and the values of the headers it
// varies on), and the URL's key holds an index (NewIndex) that lists those
// headers. So a URL keeps one entry per variant, and a client that asks
// for one variant never replaces another's: each Accept-Encoding used to
// replace the one entry of its URL, and a victim's hit rate fell to nothing
// when an attacker, or ordinary clients, alternated encodings.
//
// The values compared are the selecting values (RFC 9111, 4.1): the field
// lines joined with commas, except Accept-Encoding, which is read as the
// set of content codings it accepts (AcceptedCodings), so that its many
// spellings of one meaning select one variant.

// VariantKey is the key of the variant of key's URL that a request with
// header h selects among responses that vary on the headers vary.
func VariantKey(key Key, vary []string, h http.Header) Key {
	var b [hashBuf]byte
	buf := append(b[:0], "edge_cache/variant"...)
	buf = append(buf, key.ID[:]...)
	for _, name := range vary {
		buf = appendField(buf, name)
		buf = appendField(buf, selectingValue(name, h[name]))
	}
	key.ID = sha256.Sum256(buf)
	return key
}

// NewIndex builds the index entry of a URL whose response e varies: it
// lists e's Vary headers, and lives as long as e, or as long as prev (the
// index it replaces, if any) had left, whichever is longer, so that the
// variants stored before stay reachable.
func NewIndex(e *Entry, prev *Entry) *Entry {
	idx := &Entry{Index: true, Stored: e.Stored, TTL: e.TTL, Stale: max(e.Stale, e.SWR), Vary: e.Vary}
	if prev != nil && prev.Index && prev.Expires().After(idx.Expires()) {
		idx.Stale = prev.Expires().Sub(idx.Stored) - idx.TTL
	}
	idx.VaryValues = make([]string, len(e.Vary))
	idx.finish()
	return idx
}

// selectingValue is the value of the request header name (its field lines
// vals) that a response varying on it is selected by.
func selectingValue(name string, vals []string) string {
	if name == "Accept-Encoding" && len(vals) > 0 {
		return AcceptedCodings(vals)
	}
	return strings.Join(vals, ",")
}

// codings are the content codings Accept-Encoding is read for: the ones
// servers produce (IANA's registry, less the experimental ones). Others
// are ignored, so that made-up names select no variant of their own.
var codings = [...]string{"br", "compress", "deflate", "gzip", "zstd"}

// AcceptedCodings reads Accept-Encoding field lines (RFC 9110, 12.5.3) as
// the sorted list of the known codings they accept: a coding is accepted
// when listed with a weight above zero, or covered by "*" and not refused;
// "x-gzip" and "x-compress" are gzip and compress. When none is, the value
// is "identity". Case, spaces, order, repeats and weights other than zero
// do not matter: "gzip, deflate, br, zstd", "ZSTD;q=0.5,br , gzip,deflate"
// and "*" are one value.
func AcceptedCodings(vals []string) string {
	var listed, accepted uint8
	star := false
	for _, line := range vals {
		for item := range strings.SplitSeq(line, ",") {
			name, params, _ := strings.Cut(item, ";")
			name = strings.ToLower(httpval.Trim(name))
			ok := weight(params) >= minWeight
			if name == "*" {
				star = ok
				continue
			}
			i := codingIndex(name)
			if i < 0 {
				continue
			}
			listed |= 1 << i
			if ok {
				accepted |= 1 << i
			} else {
				accepted &^= 1 << i
			}
		}
	}
	if star {
		accepted |= ^listed
	}
	var out []byte
	for i, c := range codings {
		if accepted&(1<<i) != 0 {
			if len(out) > 0 {
				out = append(out, ',')
			}
			out = append(out, c...)
		}
	}
	if len(out) == 0 {
		return "identity"
	}
	return string(out)
}

func codingIndex(name string) int {
	switch name {
	case "x-gzip":
		name = "gzip"
	case "x-compress":
		name = "compress"
	}
	for i, c := range codings {
		if c == name {
			return i
		}
	}
	return -1
}

// minWeight is the least weight that accepts a coding: smaller ones are
// zero written with float precision, as Caddy's encode reads them.
const minWeight = 0.00001

// weight reads the weight of an Accept-Encoding member from its parameters
// (";q=0.5"): 1 when absent or invalid. As in Caddy's encode, only the
// first parameter is read (the grammar has no other).
func weight(params string) float64 {
	p, _, _ := strings.Cut(params, ";")
	p = httpval.Trim(p)
	if len(p) < 2 || !strings.EqualFold(p[:2], "q=") {
		return 1
	}
	q, err := strconv.ParseFloat(p[2:], 32)
	if err != nil || q < 0 || q > 1 {
		return 1
	}
	return q
}

// CodingAccepted tells whether a response (its headers resp) to a request
// (its headers req) may be stored as the variant that request selects:
// when the response varies on Accept-Encoding, each of its content codings
// must be one the request accepts as AcceptedCodings reads it. An upstream
// that reads Accept-Encoding otherwise (a substring "gzip" in "gzipx" or
// "gzip;q=0", say) would else store a gzip body as the variant of clients
// that accept none (a client asking for identity got it as a HIT). Such a
// response is served, not stored.
func CodingAccepted(req, resp http.Header) bool {
	ce := resp["Content-Encoding"]
	if len(ce) == 0 {
		return true
	}
	varies := false
	for _, name := range varyList(resp) {
		if name == "Accept-Encoding" {
			varies = true
			break
		}
	}
	if !varies {
		return true
	}
	accepted := "," + AcceptedCodings(req["Accept-Encoding"]) + ","
	for _, line := range ce {
		for c := range strings.SplitSeq(line, ",") {
			c = strings.ToLower(httpval.Trim(c))
			switch c {
			case "", "identity":
				continue
			case "x-gzip":
				c = "gzip"
			case "x-compress":
				c = "compress"
			}
			if !strings.Contains(accepted, ","+c+",") {
				return false
			}
		}
	}
	return true
}

// varyList is the response's Vary names, canonical (none for Vary: * or
// too many, which are not stored anyway).
func varyList(resp http.Header) []string {
	names, _ := VaryNames(resp)
	return names
}
