package edgelimit

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgelimit/caddy-edgelimit/store"
)

// A minimal Redis client: RESP2 over TCP or TLS, a bounded pool, a
// deadline on every command. It is hand-written because no Redis client
// library runs under Traefik's Yaegi interpreter (go-redis needs unsafe,
// which Traefik does not give plugins), and this plugin needs four
// commands and a subscription: AUTH, SELECT, EVALSHA, EVAL, SUBSCRIBE and
// PING.

// respError is an error reply from Redis.
type respError string

func (e respError) Error() string { return "redis: " + string(e) }

// respPool is a bounded pool of connections to one server.
type respPool struct {
	store.RedisURL // where the server is, and who connects
	timeout        time.Duration
	pingIdle       time.Duration

	size int // connections at most

	// No channels and no select: Yaegi (v0.16.1) runs every execution of
	// one select statement on one shared array of cases, so concurrent
	// requests race on it, and one could wait on another's timer or send
	// to another pool's channel (runs of the harness under load hung in
	// this pool's select, or in a release of a slot never taken). The
	// pool is a mutex, a count and a list.
	mu   sync.Mutex
	used int         // connections in use or being made
	idle []*respConn // sound connections, oldest first
}

type respConn struct {
	c        net.Conn
	r        *bufio.Reader
	lastUsed time.Time
	// watch receives what the read that watches an idle connection got:
	// the end of the stream if the server closed it, a timeout once the
	// connection is taken again.
	watch chan error
}

func newRespPool(o *redisOptions) *respPool {
	return &respPool{
		RedisURL: o.RedisURL, timeout: o.Timeout, pingIdle: pingIdle, size: o.poolSize,
	}
}

// maxIdle is how long a pooled connection may stay unused before it is
// closed instead of reused; pingIdle how long before it is asked PING
// before use (a Redis configured with an idle timeout closes connections
// unused for a whole number of seconds, one at the least).
const (
	maxIdle  = 5 * time.Minute
	pingIdle = time.Second
)

// Do implements store.Doer: it sends one command and reads its reply. It waits for a connection of
// the pool at most the timeout (a full pool is this instance's load, not
// Redis failing: store.ErrBusy), then for the reply at most the timeout,
// counted from when the command is written. A connection that saw any
// error is closed, never reused: its next reply could be this command's.
// A command is sent once and never again: a script whose reply was lost
// may have counted, and running it again would count twice.
func (p *respPool) Do(ctx context.Context, args []string) (interface{}, error) {
	if err := p.acquire(ctx); err != nil {
		return nil, err
	}
	defer p.release()
	c := p.idleConn()
	if c == nil {
		var err error
		if c, err = p.dial(time.Now().Add(p.timeout)); err != nil {
			return nil, err
		}
	}
	reply, err := c.roundTrip(time.Now().Add(p.timeout), args)
	if err != nil {
		c.c.Close()
		return nil, err
	}
	p.put(c)
	return reply, nil
}

// put returns a sound connection to the pool, with a read that watches it
// for the server closing it.
func (p *respPool) put(c *respConn) {
	c.lastUsed = time.Now()
	if err := c.c.SetReadDeadline(time.Time{}); err != nil {
		c.c.Close()
		return
	}
	watch := make(chan error, 1)
	c.watch = watch
	go c.watchIdle(watch)
	p.mu.Lock()
	if len(p.idle) < p.size {
		p.idle = append(p.idle, c)
		p.mu.Unlock()
		return
	}
	p.mu.Unlock()
	c.c.Close()
	<-watch
}

// watchIdle reads what comes on an idle connection: the end of the stream
// when the server closes it, a timeout once alive stops it. A method, not
// a closure: its connection and channel are evaluated at the go statement.
func (c *respConn) watchIdle(watch chan error) {
	_, err := c.r.Peek(1)
	watch <- err
}

// acquire takes a connection slot, waiting at most the timeout: when the
// pool is full, it looks again after a short sleep (0.1 to 2ms), which a
// full pool (this instance's load) is worth, and needs no select.
func (p *respPool) acquire(ctx context.Context) error {
	if p.take() {
		return nil
	}
	deadline := time.Now().Add(p.timeout)
	step := 100 * time.Microsecond
	for {
		time.Sleep(step)
		if p.take() {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !time.Now().Before(deadline) {
			return errPoolBusy
		}
		if step < 2*time.Millisecond {
			step *= 2
		}
	}
}

// take takes a slot if one is free.
func (p *respPool) take() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.used < p.size {
		p.used++
		return true
	}
	return false
}

// release gives back the slot acquire took. A method deferred rather than
// a closure: Yaegi evaluates its receiver once, at the defer.
func (p *respPool) release() {
	p.mu.Lock()
	if p.used > 0 {
		p.used--
	}
	p.mu.Unlock()
}

// errPoolBusy is every connection of the pool in use for the whole
// timeout: this instance's load, not Redis failing.
var errPoolBusy = fmt.Errorf("redis: every connection of the pool stayed busy: %w", store.ErrBusy)

// idleConn returns a pooled connection that is still open, or nil. A
// connection the server closed while it sat in the pool (a Redis restart,
// CLIENT KILL, its idle timeout) is found before a command is sent on it,
// by the read that watched it; sending first and retrying after could run
// a script twice. The server may close it while it is taken, too: a
// connection unused for pingIdle or more is asked PING first, which may be
// lost without harm, so that a script is sent only on a connection that
// just answered.
func (p *respPool) idleConn() *respConn {
	for {
		c := p.oldestIdle()
		if c == nil {
			return nil
		}
		idle := time.Since(c.lastUsed)
		if idle > maxIdle || !c.alive() {
			c.c.Close()
			continue
		}
		if idle >= p.pingIdle {
			if pong, err := c.roundTrip(time.Now().Add(p.timeout), []string{"PING"}); err != nil || pong != "PONG" {
				c.c.Close()
				continue
			}
		}
		return c
	}
}

// oldestIdle takes the pool's oldest idle connection, nil for none.
func (p *respPool) oldestIdle() *respConn {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.idle) == 0 {
		return nil
	}
	c := p.idle[0]
	p.idle[0] = nil
	p.idle = p.idle[1:]
	return c
}

// alive stops the read that watched an idle connection and tells whether
// the connection is still open and quiet: the read ends at once at its
// deadline with a timeout; one that had ended by itself (the server closed
// the connection, or sent what nobody asked for) ended otherwise.
func (c *respConn) alive() bool {
	if c.c.SetReadDeadline(time.Now()) != nil {
		c.c.Close()
		<-c.watch
		return false
	}
	err := <-c.watch
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout() && c.r.Buffered() == 0
}

// dial connects, authenticates and selects the database.
func (p *respPool) dial(deadline time.Time) (*respConn, error) {
	d := &net.Dialer{Deadline: deadline}
	var nc net.Conn
	var err error
	if p.TLS {
		host, _, _ := net.SplitHostPort(p.Addr)
		td := &tls.Dialer{NetDialer: d, Config: &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}}
		nc, err = td.Dial("tcp", p.Addr)
	} else {
		nc, err = d.Dial("tcp", p.Addr)
	}
	if err != nil {
		return nil, err
	}
	c := &respConn{c: nc, r: bufio.NewReaderSize(nc, 4096)}
	var setup [][]string
	switch {
	case p.Password != "" && p.Username != "":
		setup = append(setup, []string{"AUTH", p.Username, p.Password})
	case p.Password != "":
		setup = append(setup, []string{"AUTH", p.Password})
	}
	if p.DB != 0 {
		setup = append(setup, []string{"SELECT", strconv.Itoa(p.DB)})
	}
	for _, cmd := range setup {
		if _, err := c.roundTrip(deadline, cmd); err != nil {
			nc.Close()
			return nil, fmt.Errorf("redis: %s: %w", cmd[0], err)
		}
	}
	return c, nil
}

// roundTrip writes a command and reads its reply.
func (c *respConn) roundTrip(deadline time.Time, args []string) (interface{}, error) {
	if err := c.send(deadline, args); err != nil {
		return nil, err
	}
	return c.read()
}

// send writes a command, by the deadline (which then bounds its reply).
func (c *respConn) send(deadline time.Time, args []string) error {
	if err := c.c.SetDeadline(deadline); err != nil {
		return err
	}
	// One buffer, one write: under Yaegi every call into the standard
	// library goes through reflection.
	n := 16
	for _, a := range args {
		n += len(a) + 16
	}
	b := make([]byte, 0, n)
	b = append(b, '*')
	b = append(b, strconv.Itoa(len(args))...)
	b = append(b, '\r', '\n')
	for _, a := range args {
		b = append(b, '$')
		b = append(b, strconv.Itoa(len(a))...)
		b = append(b, '\r', '\n')
		b = append(b, a...)
		b = append(b, '\r', '\n')
	}
	_, err := c.c.Write(b)
	return err
}

// maxBulk bounds a reply's strings: the scripts' replies are small.
const maxBulk = 64 << 20

// readReply reads a RESP2 reply whose type byte is first: a simple string
// or bulk string (string, nil for a null bulk), an integer (int64), an
// error (respError, returned as the error) or an array ([]interface{}).
func readReply(r *bufio.Reader, first byte, depth int) (interface{}, error) {
	line, err := readLine(r)
	if err != nil {
		return nil, err
	}
	switch first {
	case '+':
		return line, nil
	case '-':
		return nil, respError(line)
	case ':':
		n, err := strconv.ParseInt(line, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("redis: bad integer reply %q", line)
		}
		return n, nil
	case '$':
		n, err := strconv.Atoi(line)
		if err != nil || n < -1 || n > maxBulk {
			return nil, fmt.Errorf("redis: bad bulk length %q", line)
		}
		if n == -1 {
			return nil, nil
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		if buf[n] != '\r' || buf[n+1] != '\n' {
			return nil, errors.New("redis: bulk string without CRLF")
		}
		return string(buf[:n]), nil
	case '*':
		n, err := strconv.Atoi(line)
		if err != nil || n < -1 || n > 1<<20 || depth > 8 {
			return nil, fmt.Errorf("redis: bad array length %q", line)
		}
		if n == -1 {
			return nil, nil
		}
		out := make([]interface{}, n)
		for i := 0; i < n; i++ {
			b, err := r.ReadByte()
			if err != nil {
				return nil, err
			}
			v, err := readReply(r, b, depth+1)
			if err != nil {
				if e, ok := err.(respError); ok {
					out[i] = e
					continue
				}
				return nil, err
			}
			out[i] = v
		}
		return out, nil
	}
	return nil, fmt.Errorf("redis: unknown reply type %q", first)
}

func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return "", err
	}
	if len(line) > 64<<10 {
		return "", errors.New("redis: reply line too long")
	}
	return strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r"), nil
}
