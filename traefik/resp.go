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
	addr     string
	username string
	password string
	db       int
	tls      bool
	timeout  time.Duration
	pingIdle time.Duration

	size int // connections at most

	// No select: Yaegi (v0.16.1) runs every execution of one select
	// statement on one shared array of cases, so concurrent requests race
	// on it, and one could wait on another's timer or send to another
	// pool's channel (runs of the harness under load hung in this pool's
	// select, or in a release of a slot never taken). The pool is a
	// mutex, a count and a list; a connection's replies come on a channel
	// of its own, with a plain send and receive.
	mu   sync.Mutex
	used int         // connections in use or being made
	idle []*respConn // sound connections, oldest first
}

type respConn struct {
	c        net.Conn
	r        *bufio.Reader
	lastUsed time.Time // when its last command was sent
	// replies are what the connection's reader (readLoop) read: each
	// reply, or the error that ended it, then closed.
	replies chan interface{}
}

func newRespPool(o *redisOptions) *respPool {
	return &respPool{
		addr: o.Addr, username: o.Username, password: o.Password, db: o.DB, tls: o.TLS, timeout: o.Timeout, pingIdle: pingIdle,
		size: o.poolSize,
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

// Do implements store.Doer: it sends one command and reads its reply. It
// waits for a slot of the pool at most the timeout (a full pool is this
// instance's load, not Redis failing: store.ErrBusy), for a sound
// connection (PINGs of idle ones, a dial) at most the timeout, then for
// the reply at most the timeout, counted from when the command is written. A
// connection that saw any error is closed, never reused: its next reply
// could be this command's. A command is sent once and never again: a
// script whose reply was lost may have counted, and running it again
// would count twice.
//
// The command path in one method (store.Doer's, called through the
// interface), the rarer cases in functions: under Yaegi a method call
// costs about as much as four function calls, and every call allocates a
// slot per value of its function.
func (p *respPool) Do(ctx context.Context, args []string) (interface{}, error) {
	// A slot, then the pool's oldest idle connection that is still sound,
	// else a new one, with its reader.
	p.mu.Lock()
	if p.used < p.size {
		p.used++
	} else {
		p.mu.Unlock()
		if err := p.acquire(ctx); err != nil {
			return nil, err
		}
		p.mu.Lock()
	}
	var c *respConn
	var deadline time.Time // of the PINGs and a dial: set by the first
	for len(p.idle) > 0 {
		c = p.idle[0]
		p.idle[0] = nil
		p.idle = p.idle[1:]
		p.mu.Unlock()
		if len(c.replies) == 0 && time.Since(c.lastUsed) < p.pingIdle || idleSound(p, c, &deadline) {
			break
		}
		discard(c)
		c = nil
		p.mu.Lock()
	}
	var err error
	if c == nil { // the pool's lock still held
		p.mu.Unlock()
		if c, err = p.dial(deadline); err != nil {
			p.release()
			return nil, err
		}
		go readLoop(c)
	}
	// The command, by the deadline, which then bounds its reply (which
	// the connection's reader reads).
	c.lastUsed = time.Now()
	var reply interface{}
	if err = c.c.SetDeadline(c.lastUsed.Add(p.timeout)); err == nil {
		if _, err = c.c.Write(appendCommand(args)); err == nil {
			reply = <-c.replies
			if e, ok := reply.(error); ok {
				err = e
			} else {
				// Back to the pool, its reader's read without a deadline.
				err = c.c.SetReadDeadline(time.Time{})
			}
		}
	}
	p.mu.Lock()
	if p.used > 0 {
		p.used--
	}
	if err == nil && len(p.idle) < p.size {
		p.idle = append(p.idle, c)
		p.mu.Unlock()
		return reply, nil
	}
	p.mu.Unlock()
	discard(c)
	if err != nil {
		return nil, err
	}
	return reply, nil
}

// readLoop reads a pooled connection's replies, for as long as it is
// open: one per command, and while the connection is idle in the pool the
// end of the stream when the server closes it. A connection is used only
// when its reader has nothing for it (idleSound). Its read has the
// deadline of the last command sent: a reply not read by then is the
// command's error, and ends the connection. A bulk string (the scripts'
// replies) is read here, the others by replyOf: under Yaegi a call costs
// a slot per value of its function, and this one is called once.
func readLoop(c *respConn) {
	for {
		var reply interface{}
		line, err := c.r.ReadString('\n')
		// A bulk string's length: digits, then CRLF.
		n, i := 0, 1
		for err == nil && i < len(line) && i < 10 && line[i] >= '0' && line[i] <= '9' {
			n = n*10 + int(line[i]-'0')
			i++
		}
		switch {
		case err != nil:
		case line[0] != '$' || i == 1 || i+2 != len(line) || line[i] != '\r' || n > maxBulk:
			reply, err = replyOf(c.r, line[0], line[1:], 0)
		default:
			// readBulk written out.
			buf := make([]byte, n+2)
			if _, err = io.ReadFull(c.r, buf); err == nil && (buf[n] != '\r' || buf[n+1] != '\n') {
				err = errBulkCRLF
			}
			reply = string(buf[:n])
		}
		// Bytes after a reply, which nobody asked for (one command at a
		// time): the stream is out of step, and the next command, sent
		// before the reader parsed them, would take them as its reply.
		if err == nil && c.r.Buffered() != 0 {
			err = errUnsolicited
		}
		if err != nil {
			c.replies <- err
			close(c.replies)
			return
		}
		c.replies <- reply
	}
}

// discard closes a connection and waits for its reader to end.
func discard(c *respConn) {
	c.c.Close()
	for range c.replies {
	}
}

// idleSound tells whether an idle connection is still open, and may be
// used. A connection the server closed while it sat in the pool (a Redis
// restart, CLIENT KILL, its idle timeout) is found before a command is
// sent on it: its reader read the end of the stream (or what nobody asked
// for) as soon as the runtime saw it. Sending first and retrying after
// could run a script twice. The server may close it while it is taken,
// too: a connection unused for pingIdle or more is asked PING first,
// which may be lost without harm, so that a script is sent only on a
// connection that just answered.
//
// The PINGs of one command, and its dial, share one deadline (*deadline,
// set by the first): a Redis that stopped answering held a command for
// the timeout once per idle connection, the pool's size times.
func idleSound(p *respPool, c *respConn, deadline *time.Time) bool {
	idle := time.Since(c.lastUsed)
	if idle > maxIdle || len(c.replies) != 0 {
		return false
	}
	if idle < p.pingIdle {
		return true
	}
	if deadline.IsZero() {
		*deadline = time.Now().Add(p.timeout)
	}
	if c.c.SetDeadline(*deadline) != nil {
		return false
	}
	_, err := c.c.Write([]byte("*1\r\n$4\r\nPING\r\n"))
	return err == nil && <-c.replies == "PONG"
}

// acquire takes a slot when Do found the pool full, waiting at
// most the timeout: it looks again after a short sleep (0.1 to 2ms),
// which a full pool (this instance's load) is worth, and needs no select.
func (p *respPool) acquire(ctx context.Context) error {
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

// dial connects, authenticates and selects the database, by the deadline
// (zero: the timeout from now).
func (p *respPool) dial(deadline time.Time) (*respConn, error) {
	if deadline.IsZero() {
		deadline = time.Now().Add(p.timeout)
	}
	d := &net.Dialer{Deadline: deadline}
	var nc net.Conn
	var err error
	if p.tls {
		host, _, _ := net.SplitHostPort(p.addr)
		td := &tls.Dialer{NetDialer: d, Config: &tls.Config{MinVersion: tls.VersionTLS12, ServerName: host}}
		nc, err = td.Dial("tcp", p.addr)
	} else {
		nc, err = d.Dial("tcp", p.addr)
	}
	if err != nil {
		return nil, err
	}
	c := &respConn{c: nc, r: bufio.NewReaderSize(nc, 4096), replies: make(chan interface{}, 1)}
	var setup [][]string
	switch {
	case p.password != "" && p.username != "":
		setup = append(setup, []string{"AUTH", p.username, p.password})
	case p.password != "":
		setup = append(setup, []string{"AUTH", p.password})
	}
	if p.db != 0 {
		setup = append(setup, []string{"SELECT", strconv.Itoa(p.db)})
	}
	for _, cmd := range setup {
		_, err := roundTrip(c, deadline, cmd)
		if err == nil && c.r.Buffered() != 0 {
			err = errUnsolicited // the first command's reply, else
		}
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("redis: %s: %w", cmd[0], err)
		}
	}
	return c, nil
}

// roundTrip writes a command, by the deadline (which then bounds its
// reply), and reads its reply.
func roundTrip(c *respConn, deadline time.Time, args []string) (interface{}, error) {
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
	_, err := c.c.Write(appendCommand(args))
	return err
}

// appendCommand writes a command in one buffer, for one write: strings
// added, each argument after the end of the line before (under Yaegi an
// append costs more than a +, each + allocates, and every call into the
// standard library goes through reflection), and a table of small lengths.
func appendCommand(args []string) []byte {
	cmd := "*" + strconv.Itoa(len(args))
	for _, a := range args {
		if len(a) < len(lenLines) {
			cmd += lenLines[len(a)] + a
		} else {
			cmd += "\r\n$" + strconv.Itoa(len(a)) + "\r\n" + a
		}
	}
	return []byte(cmd + "\r\n")
}

// lenLines are the lengths below 256 as appendCommand writes them.
var lenLines [256]string

func init() {
	for i := range lenLines {
		lenLines[i] = "\r\n$" + strconv.Itoa(i) + "\r\n"
	}
}

// readBulk reads a bulk string's n bytes and its CRLF.
func readBulk(r *bufio.Reader, n int) (interface{}, error) {
	buf := make([]byte, n+2)
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, err
	}
	if buf[n] != '\r' || buf[n+1] != '\n' {
		return nil, errBulkCRLF
	}
	return string(buf[:n]), nil
}

var errBulkCRLF = errors.New("redis: bulk string without CRLF")

// errUnsolicited is a reply followed by bytes no command asked for.
var errUnsolicited = errors.New("redis: data after a reply, unasked for")

// maxBulk bounds a reply's strings: the scripts' replies are small.
const maxBulk = 64 << 20

// readReply reads a RESP2 reply whose type byte is first: a simple string
// or bulk string (string, nil for a null bulk), an integer (int64), an
// error (respError, returned as the error) or an array ([]interface{}).
func readReply(r *bufio.Reader, first byte, depth int) (interface{}, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	return replyOf(r, first, line, depth)
}

// replyOf reads the rest of a reply whose first line, after its type
// byte, is line.
func replyOf(r *bufio.Reader, first byte, line string, depth int) (interface{}, error) {
	if len(line) > 64<<10 {
		return nil, errors.New("redis: reply line too long")
	}
	line = strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
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
		return readBulk(r, n)
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
