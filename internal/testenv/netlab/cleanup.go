package netlab

import (
	"errors"
	"os"
	"os/signal"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// maxSweep bounds how many leftover namespaces one sweep removes.
const maxSweep = 1000

// owned reads the owner's pid out of a namespace a lab made:
// ipx<pid>x<hex>-<host>.
var owned = regexp.MustCompile(`^` + Prefix + `([0-9]+)x[0-9a-f]+-[a-z0-9]+$`)

// sweep removes the namespaces of labs whose process is gone (killed
// before its cleanup ran), and their processes. A lab of a live process,
// this one's or another test binary's, is left alone. (A dead run's pid
// taken by a new process hides its leftovers until that process ends.)
func sweep(tl tools) error {
	out, err := tl.run(tl.ip, "netns", "list")
	if err != nil {
		return err
	}
	var errs []error
	removed := 0
	for line := range strings.SplitSeq(out, "\n") {
		name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
		m := owned.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || pid == os.Getpid() || pidAlive(pid) {
			continue
		}
		if removed++; removed > maxSweep {
			break
		}
		errs = append(errs, removeNS(tl, name))
	}
	return errors.Join(errs...)
}

// live are the labs not yet closed; while there is one, SIGINT and
// SIGTERM close them all before the signal ends the process.
var live struct {
	sync.Mutex
	labs map[*Lab]struct{}
	sigs chan os.Signal
	stop chan struct{}
}

// register adds l to the live labs, catching the signals from the first.
func register(l *Lab) {
	live.Lock()
	defer live.Unlock()
	if len(live.labs) == 0 {
		live.labs = map[*Lab]struct{}{}
		live.sigs, live.stop = make(chan os.Signal, 1), make(chan struct{})
		signal.Notify(live.sigs, syscall.SIGINT, syscall.SIGTERM)
		go onSignal(live.sigs, live.stop)
	}
	live.labs[l] = struct{}{}
}

// unregister drops l from the live labs; after the last, the signals are
// left to their default again and the watching goroutine ends.
func unregister(l *Lab) {
	live.Lock()
	defer live.Unlock()
	if _, ok := live.labs[l]; !ok {
		return
	}
	delete(live.labs, l)
	if len(live.labs) == 0 {
		signal.Stop(live.sigs)
		close(live.stop)
	}
}

// onSignal closes every live lab when sig arrives, then raises the signal
// again with its default action, so the process ends as it would have
// (go test reports it), its children killed by their parent-death signal.
func onSignal(sigs <-chan os.Signal, stop <-chan struct{}) {
	select {
	case <-stop:
		return
	case sig := <-sigs:
		live.Lock()
		var labs []*Lab
		for l := range live.labs {
			labs = append(labs, l)
		}
		live.Unlock()
		for _, l := range labs {
			_ = l.Close() // nobody is left to tell; the sweep catches what stays
		}
		signal.Reset(sig)
		_ = syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		// The signal is delivered to some thread a moment later and its
		// default action ends the process; should it be caught elsewhere
		// after all, this ends it anyway.
		time.Sleep(5 * time.Second)
		os.Exit(2)
	}
}
