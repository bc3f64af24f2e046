// Package args reads the arguments of Caddyfile options the same way for
// every module of edgelimit: one value per option line, errors that name
// the file and line (as caddyfile.Dispenser.Errf writes them).
package args

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// One reads the single argument of the option the dispenser is on.
func One(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return v, nil
}

// None checks that the option the dispenser is on has no argument.
func None(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Int reads one whole-number argument; a following argument is an error
// unless it is one of allowNext (left for the caller to read).
func Int(d *caddyfile.Dispenser, allowNext ...string) (int64, error) {
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	text := d.Val()
	n, err := strconv.ParseInt(text, 10, 64)
	if err != nil {
		return 0, d.Errf("%q is not a whole number", text)
	}
	if d.NextArg() {
		for _, a := range allowNext {
			if d.Val() == a {
				d.Prev()
				return n, nil
			}
		}
		return 0, d.ArgErr()
	}
	return n, nil
}

// Duration reads one duration argument (Caddy's forms: 10s, 1h, 1d).
func Duration(d *caddyfile.Dispenser) (time.Duration, error) {
	v, err := One(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("bad duration %q: %v", v, err)
	}
	return dur, nil
}

// Size reads one size argument: bytes, or a number with a unit as
// go-humanize reads it (256KB = 256000, 1MiB = 1048576).
func Size(d *caddyfile.Dispenser) (int64, error) {
	v, err := One(d)
	if err != nil {
		return 0, err
	}
	n, err := humanize.ParseBytes(v)
	if err != nil {
		return 0, d.Errf("size %q: want bytes or a size such as 256KB or 256MB", v)
	}
	if n == 0 || n > math.MaxInt64/2 {
		return 0, d.Errf("size %q: out of range", v)
	}
	return int64(n), nil
}

// HasBlock tells whether the rest of the current line opens a block,
// leaving the dispenser where it was.
func HasBlock(d *caddyfile.Dispenser) bool {
	n := d.CountRemainingArgs()
	for range n {
		d.NextArg()
	}
	line, file := d.Line(), d.File()
	open := false
	if d.Next() {
		open = d.Val() == "{" && d.Line() == line && d.File() == file
		d.Prev()
	}
	for range n {
		d.Prev()
	}
	return open
}

// ErrAt is an error at a token's place in the Caddyfile, as Dispenser.Errf
// would write it, for errors found after the dispenser moved on.
func ErrAt(tok caddyfile.Token, format string, a ...any) error {
	return fmt.Errorf("%s, at %s:%d", fmt.Sprintf(format, a...), tok.File, tok.Line)
}
