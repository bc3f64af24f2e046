package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"github.com/edgelimit/caddy-edgelimit/internal/redistest"
)

// proc is a child process the bench started: Caddy, the upstream, Redis.
// Each runs in its own process group so that stopping it stops everything
// it started, and every proc is registered so that an error or Ctrl-C
// stops them all.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string        // its stdout and stderr
	done chan struct{} // closed when it exited
	err  error         // its exit status, once done
}

type registry struct {
	mu    sync.Mutex
	procs map[*proc]bool
}

var children = &registry{procs: make(map[*proc]bool)}

// start runs argv pinned to cpus (taskset -c; "" for no pinning) with env
// added to the bench's environment, output to logPath.
func start(name, cpus string, env []string, logPath string, argv ...string) (*proc, error) {
	if cpus != "" {
		argv = append([]string{"taskset", "-c", cpus}, argv...)
	}
	out, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = out
	cmd.Stderr = out
	// Own process group, and killed if the bench dies without cleaning up.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	children.mu.Lock()
	children.procs[p] = true
	children.mu.Unlock()
	go func() {
		p.err = cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after a grace
// period, and waits for the process to exit.
func (p *proc) stop() {
	children.mu.Lock()
	delete(children.procs, p)
	children.mu.Unlock()
	if p.exited() {
		return
	}
	pgid := p.pid()
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
}

// tail is the end of the process's log, for error messages.
func (p *proc) tail() string {
	b, _ := os.ReadFile(p.log)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(bytes.TrimSpace(b))
}

// stopAll stops every process still running.
func (r *registry) stopAll() {
	r.mu.Lock()
	ps := make([]*proc, 0, len(r.procs))
	for p := range r.procs {
		ps = append(ps, p)
	}
	r.mu.Unlock()
	for _, p := range ps {
		p.stop()
	}
}

// freePort asks the kernel for a free loopback TCP port.
var freePort = redistest.FreePort

// waitPort waits until 127.0.0.1:port accepts connections, the process
// exits, or the timeout passes.
func waitPort(ctx context.Context, p *proc, port int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	for {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited before listening on %s: %v\n%s", p.name, addr, p.err, p.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not listening on %s after %s\n%s", p.name, addr, timeout, p.tail())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// cpuSeconds is the user plus system CPU time a process used so far, all
// its threads included (/proc/<pid>/stat).
func cpuSeconds(pid int) (float64, error) {
	p, err := procFS().Proc(pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return st.CPUTime(), nil
}

// busyCPU is the CPU time the machine spent busy so far: user, nice,
// system, irq, softirq and steal from /proc/stat, of one CPU ("0", "1") or
// of all of them ("").
func busyCPU(cpu string) (float64, error) {
	st, err := procFS().Stat()
	if err != nil {
		return 0, err
	}
	c := st.CPUTotal
	if cpu != "" {
		n, err := strconv.ParseInt(cpu, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("cpu %q: %w", cpu, err)
		}
		var ok bool
		if c, ok = st.CPU[n]; !ok {
			return 0, fmt.Errorf("no cpu%s in /proc/stat", cpu)
		}
	}
	return c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ + c.Steal, nil
}

// procFS is /proc.
var procFS = sync.OnceValue(func() procfs.FS {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		panic(err) // no /proc: the bench runs on Linux only
	}
	return fs
})
