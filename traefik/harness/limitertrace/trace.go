// Package limitertrace writes what package limiter decides for a random
// but reproducible sequence of limits, times, costs, takes and refunds. The
// harness runs it compiled (./run) and under Yaegi and expects the same
// text: the interpreter must decide exactly as the compiled Caddy module
// does. Traefik never loads it.
package limitertrace

import (
	"fmt"
	"io"
	"math/rand"
	"time"

	"github.com/edgelimit/caddy-edgelimit/limiter"
)

var windows = []time.Duration{time.Millisecond, 250 * time.Millisecond, time.Second, 10 * time.Second, time.Minute, time.Hour, 24 * time.Hour}

// Trace writes the decisions of steps requests from seed, from start
// (microseconds since the epoch).
func Trace(w io.Writer, seed int64, steps int, start int64) {
	rng := rand.New(rand.NewSource(seed))
	paris, err := time.LoadLocation("Europe/Paris")
	if err != nil {
		paris = time.UTC
	}
	now := start
	for n := 0; n < steps; n += 50 {
		l := limiter.Limit{
			Algorithm: limiter.Algorithm(1 + rng.Intn(5)),
			Quota:     int64(1 + rng.Intn(20)),
			Window:    windows[rng.Intn(len(windows))],
			Rate:      int64(1 + rng.Intn(10)),
		}
		if l.Algorithm == limiter.FixedWindow || l.Algorithm == limiter.SlidingWindow {
			l.Offset = time.Duration(rng.Int63n(int64(l.Window)/int64(time.Microsecond))) * time.Microsecond
		}
		if l.Algorithm == limiter.FixedWindow && rng.Intn(4) == 0 {
			cw := limiter.CalendarWindow{Period: limiter.Period(1 + rng.Intn(3)), Location: paris, At: time.Duration(rng.Intn(24)) * time.Hour}
			l.Calendar = cw.Cached()
		}
		fmt.Fprintf(w, "limit %s q=%d w=%s r=%d o=%s cal=%t valid=%v\n", l.Algorithm, l.Quota, l.Window, l.Rate, l.Offset, l.Calendar != nil, l.Validate())
		var s limiter.State
		var r limiter.Result
		for i := 0; i < 50; i++ {
			now += rng.Int63n(int64(l.Window/time.Microsecond)/2 + 1)
			cost := int64(1 + rng.Intn(3))
			if rng.Intn(8) == 0 {
				l.Refund(&s, now, cost)
				fmt.Fprintf(w, "refund %d %d %+v\n", now, cost, s)
				continue
			}
			l.Take(&s, &r, now, cost)
			fmt.Fprintf(w, "take %d %d %+v %+v\n", now, cost, s, r)
		}
	}
}
