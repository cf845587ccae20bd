package testenv

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// StopGrace is how long Stop waits after SIGTERM in a test's cleanup before
// it kills. Every server here shuts down well within it.
const StopGrace = 10 * time.Second

// Command is a child process to start.
type Command struct {
	// Name tells the process apart in messages.
	Name string
	// Path is the binary; Args its arguments.
	Path string
	Args []string
	// Env is added to this process's environment.
	Env []string
	// LogFile, if set, receives the output instead of memory: the
	// benchmark keeps its servers' logs on disk. Output then reads its tail.
	LogFile string
}

// Process is a started child. It is always reaped: Stop and Kill wait for
// it, and a goroutine waits for it meanwhile so Done closes when it exits.
type Process struct {
	name    string
	cmd     *exec.Cmd
	out     *Buffer // nil when the output goes to logFile
	logFile string
	done    chan struct{}
	err     error // valid once done is closed
}

// StartProcess starts c in its own process group (killed with this process
// on Linux).
func StartProcess(c Command) (*Process, error) {
	p := &Process{name: c.Name, logFile: c.LogFile, done: make(chan struct{})}
	cmd := exec.Command(c.Path, c.Args...)
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.SysProcAttr = sysProcAttr()
	if c.LogFile != "" {
		f, err := os.Create(c.LogFile)
		if err != nil {
			return nil, fmt.Errorf("%s: log file: %w", c.Name, err)
		}
		defer f.Close() // the child has its own copy of the descriptor
		cmd.Stdout, cmd.Stderr = f, f
	} else {
		p.out = &Buffer{}
		cmd.Stdout, cmd.Stderr = p.out, p.out
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", c.Name, c.Path, err)
	}
	p.cmd = cmd
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Name is the Command's name.
func (p *Process) Name() string { return p.name }

// Pid is the child's process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the child (not its group): SIGSTOP and SIGCONT to
// freeze and resume it, SIGTERM to ask it to stop.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Done is closed once the child has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the child exited (nil: status 0); valid once Done is closed.
func (p *Process) Err() error {
	<-p.done
	return p.err
}

// Exited reports whether the child is gone, with how it exited.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM, waits up to grace, then kills the process group, and
// always waits until the child is reaped. Stopping a stopped child is a
// no-op. A frozen (SIGSTOP) child is resumed first so it can exit cleanly.
func (p *Process) Stop(grace time.Duration) {
	if done, _ := p.Exited(); done {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
		p.Kill()
	}
}

// Kill SIGKILLs the child's process group and waits until it is reaped.
func (p *Process) Kill() {
	if done, _ := p.Exited(); !done {
		killGroup(p.cmd.Process)
	}
	<-p.done
}

// Output is what the child wrote so far: all of it, or the last 16 KiB of
// its log file.
func (p *Process) Output() string {
	if p.out != nil {
		return p.out.String()
	}
	return fileTail(p.logFile, 16<<10)
}

// Lines is Output line by line.
func (p *Process) Lines() []string { return splitLines(p.Output()) }

// Failure wraps err with the child's name and its last lines of output.
func (p *Process) Failure(err error) error {
	lines := p.Lines()
	if len(lines) > 20 {
		lines = lines[len(lines)-20:]
	}
	where := "output"
	if p.logFile != "" {
		where = p.logFile
	}
	return fmt.Errorf("%s: %w\n--- last lines of %s ---\n%s", p.name, err, where, strings.Join(lines, "\n"))
}

// fileTail returns at most the last max bytes of path, or "".
func fileTail(path string, max int64) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(-max, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}
