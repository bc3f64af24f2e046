package storage

import (
	"context"
	"errors"
	"fmt"
	"github.com/edgelimit/caddy-edgelimit/store"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/redis/go-redis/v9"
)

// redisReplyError is an error reply as go-redis returns it.
type redisReplyError string

func (e redisReplyError) Error() string { return string(e) }
func (redisReplyError) RedisError()     {}

func TestClassifyRedisError(t *testing.T) {
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: &os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}}
	timeout := &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}
	for _, c := range []struct {
		err  error
		kind RedisErrorKind
		ok   bool
	}{
		{nil, 0, false},
		{context.Canceled, 0, false},
		{redisReplyError("NOSCRIPT No matching script. Please use EVAL."), 0, false},
		{context.DeadlineExceeded, RedisTimeout, true},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), RedisTimeout, true},
		{timeout, RedisTimeout, true},
		{redis.ErrPoolTimeout, RedisTimeout, true},
		{refused, RedisConnection, true},
		{io.EOF, RedisConnection, true},
		{redis.ErrClosed, RedisConnection, true},
		{syscall.ECONNRESET, RedisConnection, true},
		{store.ErrBadReply, RedisScript, true},
		{redisReplyError("ERR user_script:1: Script attempted to access nonexistent global variable"), RedisScript, true},
		{redisReplyError("ERR Error running script (call to f_x): @user_script:1: oops"), RedisScript, true},
		{redisReplyError("OOM command not allowed when used memory > 'maxmemory'. script: d7a6c842b273da0421049dc6dcbe8b595437a707, on @user_script:1."), RedisOOM, true},
		{redisReplyError("OOM command not allowed when used memory > 'maxmemory'."), RedisOOM, true},
		{redisReplyError("WRONGPASS invalid username-password pair"), RedisOther, true},
		{redisReplyError("LOADING Redis is loading the dataset in memory"), RedisOther, true},
		{errors.New("something else"), RedisOther, true},
	} {
		kind, ok := ClassifyRedisError(c.err)
		if ok != c.ok || ok && kind != c.kind {
			t.Errorf("%v: %s %v, want %s %v", c.err, kind, ok, c.kind, c.ok)
		}
	}
	for k := range NumRedisErrorKinds + 1 {
		if k.String() == "" {
			t.Errorf("kind %d has no name", k)
		}
	}
}
