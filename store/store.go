// Package store keeps the state behind the limiter's algorithms, as both
// edges of edgelimit (the Caddy module and the Traefik plugin) do it: the
// Store interface, the memory store, and of a store on a Redis server all
// that does not talk to Redis: the Lua scripts, the keys and the encoding
// of their arguments and replies, the failure policy and the memory of
// denials (Remote). A Store decides all the limits of one request at once,
// so that a request denied by one limit consumes nothing from the others,
// and a networked store can do it in one round trip.
//
// The Traefik plugin runs this package in Traefik's Yaegi interpreter: it
// imports the standard library only, and avoids what Yaegi cannot run (see
// traefik/yaegi_safe_test.go). The Redis clients are the edges' own: the
// Caddy module's is go-redis (package storage), the plugin's a small RESP
// client; both send these scripts with these arguments, so that Caddy and
// Traefik instances on one Redis share their counts exactly.
//
// Files: store.go (Store, Request, all or nothing), memory.go (Memory),
// admin.go (Admin: inspect, reset, credit), denials.go (the memory of
// denials), lua.go (the scripts), codec.go (keys, arguments, replies,
// stored states), remote.go (the failure policy and a remote decision).
package store

import (
	"context"
	"errors"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// Request asks for Cost units of one limit on behalf of one client.
type Request struct {
	// Counter names the counter: the limit's identity, stable across
	// reloads and across instances. Requests with equal Counter and Key
	// share one state.
	Counter string
	// Key identifies the client within the counter. It may be of any
	// length and content; stores hash it and never keep it as is.
	Key string
	// Limit holds the numbers; they may differ between requests on one
	// counter (tiers), and the state carries over.
	Limit limiter.Limit
	// Cost is the number of units to take, at least 1.
	Cost int64
	// DryRun requests are counted and reported, but their denial does not
	// deny the whole.
	DryRun bool
	// Mode is what the request asks: ModeTake (the default) decides and
	// counts; ModeCheck decides whether Cost would pass and counts nothing
	// (limiter.Check); ModeCharge counts Cost whatever is left and never
	// denies (limiter.Charge).
	Mode Mode
	// Sync, when set, decides the request from this instance's view of
	// the counter, merged into the server every Sync (Synced), instead of
	// at the server.
	Sync time.Duration
}

// Mode is what a Request asks of its limit. The scripts read it from bits
// 4 and 5 of the request's code (codec.go).
type Mode uint8

// The modes: a limit that counts responses is checked before the request
// is served and charged once its response is known.
const (
	ModeTake Mode = iota
	ModeCheck
	ModeCharge
)

// Store decides requests against shared state.
type Store interface {
	// Take decides reqs together, at time now, and writes results[i] for
	// reqs[i] (results must be at least as long as reqs).
	//
	// All or nothing: when every request that is not a dry run is allowed,
	// each allowed request is counted. Otherwise nothing is counted; the
	// denied requests mark their keys as denied (for FirstDenial), and the
	// results of the others keep Allowed but show what remained before.
	//
	// A store with a clock of its own (Redis server time) may use it
	// instead of now. Take never blocks longer than the store's timeout;
	// errors are ErrUnavailable when the store applies its failure policy
	// by denying, or any other error when the caller should let the request
	// through.
	Take(ctx context.Context, now time.Time, reqs []Request, results []limiter.Result) error
	// Refund gives back what an earlier Take of reqs counted, when the
	// request was denied after all by a limiter that decided later (another
	// edge_limit handler on the request's way). Only windows still current
	// are touched. Like Take, it is bounded by the store's timeout.
	Refund(ctx context.Context, now time.Time, reqs []Request) error
	// Close releases the store's resources.
	Close() error
}

// ErrUnavailable is returned by a Store that cannot decide and whose
// failure policy is to deny (answered with 503 and Retry-After).
var ErrUnavailable = errors.New("rate-limit storage unavailable")

// errDown is the cause when the server was not even asked.
var errDown = errors.New("the server failed, and is probed until it answers")

// Errors returned while a server is known to be down (remote.go), made
// once, here: Yaegi initializes a package's variables file by file, and
// these need ErrUnavailable made first. (Not an error type of this
// package: under Yaegi, errors.Is does not see the Unwrap method of an
// interpreted type; fmt's wrapping it does see.)
var (
	errDownAllow = allowError(errDown)
	errDownDeny  = denyError(errDown)
)

// ErrTooFewResults is returned when results is shorter than reqs.
var ErrTooFewResults = errors.New("store: results shorter than requests")

// AllOrNothing applies the all-or-nothing rule of Take to results decided
// one by one: it reports whether every request that is not a dry run was
// allowed, and when one was not, it reports the allowed ones as uncounted
// (what remained before them). Every store decides through it.
func AllOrNothing(reqs []Request, results []limiter.Result) bool {
	// Passes(reqs, results, nil), written out: a call less under Yaegi.
	pass := true
	for i := range reqs {
		if !results[i].Allowed && !reqs[i].DryRun {
			pass = false
			break
		}
	}
	if pass {
		return true
	}
	for i := range reqs {
		// A check counted nothing, and says so already.
		if results[i].Allowed && reqs[i].Mode != ModeCheck {
			Uncounted(&results[i], reqs[i].Cost)
		}
	}
	return false
}

// Passes tells whether every request at idx (all when idx is nil) that is
// not a dry run was allowed.
func Passes(reqs []Request, results []limiter.Result, idx []int) bool {
	if idx == nil {
		for i := range reqs {
			if !results[i].Allowed && !reqs[i].DryRun {
				return false
			}
		}
		return true
	}
	for _, i := range idx {
		if !results[i].Allowed && !reqs[i].DryRun {
			return false
		}
	}
	return true
}

// ErrCalendarMoving is returned when a store's server keeps answering from
// another calendar window than the one computed for it.
var ErrCalendarMoving = errors.New("store: calendar windows keep moving under the server's clock")

// AtServerTime runs try with the time that calendar windows are computed
// for: the caller's first, then, when a store with a clock of its own (the
// Redis server's) answers that it is in another calendar window, the time
// it gave (try returns it; 0 means done), a few times at most.
func AtServerTime(at int64, try func(at int64) (serverNow int64, err error)) error {
	for i := 0; i < 3; i++ {
		serverNow, err := try(at)
		if err != nil || serverNow == 0 {
			return err
		}
		at = serverNow
	}
	return ErrCalendarMoving
}

// Uncounted adjusts the result of a request that its own limit allowed but
// that was not counted because another limit denied the whole: it reports
// what remained before the request.
func Uncounted(r *limiter.Result, cost int64) {
	r.Remaining += cost
	if r.Remaining > r.Limit {
		r.Remaining = r.Limit
	}
}

// Unwritten adjusts the results of a decision that Redis made but could not
// write (ErrFull): no denial was marked, so none is reported as the first
// (each request of an exhausted client would report it again).
func Unwritten(results []limiter.Result) {
	for i := range results {
		results[i].FirstDenial = false
	}
}
