package edgecache

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/edgelimit/caddy-edgelimit/cache"
	"github.com/edgelimit/caddy-edgelimit/internal/jsonbody"
)

func init() {
	caddy.RegisterModule(Admin{})
}

// Admin serves the edge_cache purge endpoint of Caddy's admin API, the
// equivalent of Bloom Control's FLUSHB and FLUSHA:
//
//	POST /edge_cache/purge
//	{"buckets": ["user_id:10012"], "authorization": "Bearer ...", "shard": 0}
//
// It purges every store of the running edge_cache handlers and answers
// {"purged": <entries removed>}.
type Admin struct{}

// CaddyModule returns the Caddy module information.
func (Admin) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.edge_cache",
		New: func() caddy.Module { return new(Admin) },
	}
}

// Routes implements caddy.AdminRouter.
func (Admin) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: "/edge_cache/purge",
		Handler: caddy.AdminHandlerFunc(handlePurge),
	}}
}

// PurgeRequest is the body of POST /edge_cache/purge. At least one of
// Buckets, Authorization and AuthorizationHash is required; an entry is
// removed when it matches any of them.
type PurgeRequest struct {
	// Buckets are names the upstream gave in Bloom-Response-Buckets.
	Buckets []string `json:"buckets,omitempty"`
	// Authorization is an Authorization header value, as the client sent
	// it (e.g. "Bearer abc"); it is hashed here and not kept.
	Authorization string `json:"authorization,omitempty"`
	// AuthorizationHash is the SHA-256 of such a value, in hexadecimal,
	// for callers that should not handle the credential.
	AuthorizationHash string `json:"authorization_hash,omitempty"`
	// Shard limits the purge to one Bloom-Request-Shard namespace, 0 to
	// 15. Default: every namespace.
	Shard *int `json:"shard,omitempty"`
}

// PurgeResponse is the answer to a purge.
type PurgeResponse struct {
	// Purged is the number of entries removed.
	Purged int `json:"purged"`
}

// maxPurgeBody bounds the request body.
const maxPurgeBody = 1 << 20

func handlePurge(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed: POST a purge", r.Method)}
	}
	p, err := decodePurge(r.Body)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: err}
	}
	total := 0
	var errs []error
	for _, s := range liveStores() {
		n, err := s.Purge(r.Context(), p)
		total += n
		purgedTotal.Add(float64(n))
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return caddy.APIError{HTTPStatus: http.StatusBadGateway, Err: fmt.Errorf("purged %d entries, but a store failed: %w", total, errors.Join(errs...))}
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(PurgeResponse{Purged: total})
}

// decodePurge reads and checks a purge request.
func decodePurge(body io.Reader) (cache.Purge, error) {
	var p cache.Purge
	var req PurgeRequest
	if err := jsonbody.Decode(body, maxPurgeBody, &req); err != nil {
		var tl *jsonbody.TooLargeError
		var re *jsonbody.ReadError
		if errors.As(err, &tl) || errors.As(err, &re) || errors.Is(err, jsonbody.ErrTrailing) {
			return p, err
		}
		return p, fmt.Errorf(`want a JSON object such as {"buckets": ["a"], "authorization": "Bearer ...", "shard": 0}: %w`, err)
	}
	for _, b := range req.Buckets {
		if b == "" || len(b) > cache.MaxBucketLen {
			return p, fmt.Errorf("bucket %q: want a name of 1 to %d bytes", b, cache.MaxBucketLen)
		}
	}
	p.Buckets = req.Buckets
	if req.Authorization != "" {
		p.Auths = append(p.Auths, cache.AuthHash(req.Authorization))
	}
	if req.AuthorizationHash != "" {
		h, err := cache.ParseHash(req.AuthorizationHash)
		if err != nil {
			return p, fmt.Errorf("authorization_hash: %w", err)
		}
		p.Auths = append(p.Auths, h)
	}
	if req.Shard != nil {
		if *req.Shard < 0 || *req.Shard >= cache.Shards {
			return p, fmt.Errorf("shard %d: want 0 to %d", *req.Shard, cache.Shards-1)
		}
		p.Shards = []uint8{uint8(*req.Shard)}
	}
	if p.Empty() {
		return p, errors.New("name what to purge: buckets, authorization or authorization_hash")
	}
	return p, nil
}

// Interface guard.
var _ caddy.AdminRouter = Admin{}
