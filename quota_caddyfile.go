package edgelimit

import (
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/edgelimit/caddy-edgelimit/internal/args"
	"github.com/edgelimit/caddy-edgelimit/limiter"
)

// parseQuotaLine reads `quota <n> per day|week|month [at HH:MM] [in
// <zone>]` inside a limit.
func parseQuotaLine(d *caddyfile.Dispenser, n *Numbers) error {
	count, err := args.Int(d, "per")
	if err != nil {
		return err
	}
	if count < 1 {
		return d.Errf("quota must be at least 1, got %d", count)
	}
	if !d.NextArg() || d.Val() != "per" || !d.NextArg() {
		return d.Errf("quota %d: want quota <n> per day|week|month", count)
	}
	cal := &CalendarConfig{Period: d.Val()}
	for d.NextArg() {
		switch d.Val() {
		case "at":
			if !d.NextArg() {
				return d.ArgErr()
			}
			cal.At = d.Val()
		case "in":
			if !d.NextArg() {
				return d.ArgErr()
			}
			cal.TimeZone = d.Val()
		default:
			return d.Errf("quota: unexpected %q (want at HH:MM or in <time zone>)", d.Val())
		}
	}
	if _, err := cal.spec().Compile(); err != nil {
		return d.Errf("quota: %v", err)
	}
	n.Algorithm, n.Limit, n.Calendar = "fixed_window", count, cal
	return nil
}

// quotaSpec collects a quota block's limit and reset lines.
type quotaSpec struct {
	count    int64
	period   string        // day, week or month
	every    time.Duration // or a window of any length
	aligned  bool
	at, zone string
	hasReset bool
	resetTok caddyfile.Token
}

// parseLimit reads `limit <n> per day|week|month|<duration>
// [anchored|aligned]`.
func (q *quotaSpec) parseLimit(d *caddyfile.Dispenser) error {
	count, err := args.Int(d, "per")
	if err != nil {
		return err
	}
	if count < 1 {
		return d.Errf("limit must be at least 1, got %d", count)
	}
	if !d.NextArg() || d.Val() != "per" || !d.NextArg() {
		return d.Errf("limit %d: want limit <n> per day|week|month|<duration>", count)
	}
	q.count = count
	if _, err := limiter.ParsePeriod(d.Val()); err == nil {
		q.period = d.Val()
	} else {
		dur, err := caddy.ParseDuration(d.Val())
		if err != nil || dur <= 0 {
			return d.Errf("limit %d per %q: want day, week, month or a duration such as 5m", count, d.Val())
		}
		q.every = dur
	}
	if d.NextArg() {
		switch d.Val() {
		case "anchored":
		case "aligned":
			q.aligned = true
		default:
			return d.Errf("limit: unexpected %q (want anchored or aligned)", d.Val())
		}
		if q.period != "" {
			return d.Errf("a calendar quota is aligned to its reset time; %s goes with a duration", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// parseReset reads `reset <HH:MM> [<time zone>]`.
func (q *quotaSpec) parseReset(d *caddyfile.Dispenser) error {
	q.resetTok = d.Token()
	if !d.NextArg() {
		return d.ArgErr()
	}
	q.at, q.hasReset = d.Val(), true
	if d.NextArg() {
		q.zone = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	cal := CalendarConfig{Period: "day", At: q.at, TimeZone: q.zone}
	if _, err := cal.spec().Compile(); err != nil {
		return d.Errf("reset: %v", err)
	}
	return nil
}

// settle makes a quota block's numbers. A quota is account-wide: global
// unless its scope says otherwise.
func (q *quotaSpec) settle(l *Limit) error {
	if q.count == 0 {
		return errors.New("no limit line: give limit <n> per day|week|month|<duration>")
	}
	if l.Scope == "" {
		l.Scope = "global"
	}
	l.Limit = q.count
	switch {
	case q.period != "":
		zone := q.zone
		if zone == "UTC" {
			zone = ""
		}
		l.Algorithm = "fixed_window"
		l.Calendar = &CalendarConfig{Period: q.period, At: q.at, TimeZone: zone}
	case q.hasReset:
		return fmt.Errorf("reset goes with a limit per day, week or month, not per %s", q.every)
	case q.aligned:
		l.Algorithm, l.Window = "fixed_window", caddy.Duration(q.every)
	default:
		l.Algorithm, l.Window = "anchored_window", caddy.Duration(q.every)
	}
	return nil
}
