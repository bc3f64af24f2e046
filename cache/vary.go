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
