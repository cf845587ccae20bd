package testenv

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/prometheus/procfs"
)

// Memory is a process's resident set, now and at its peak, in KiB.
type Memory struct{ RSS, Peak int64 }

// ProcessCPU is the CPU time (user plus system, all threads) pid used.
func ProcessCPU(pid int) (time.Duration, error) { return processCPU(procfs.DefaultMountPoint, pid) }

// MachineCPU is the CPU time every process used: all but idle and iowait.
func MachineCPU() (time.Duration, error) { return machineCPU(procfs.DefaultMountPoint) }

// ProcessMemory is pid's resident set, now and at its peak.
func ProcessMemory(pid int) (Memory, error) { return processMemory(procfs.DefaultMountPoint, pid) }

// ResetPeakRSS starts a new peak (VmHWM) period for pid, so each run
// reports its own peak (writing 5 to clear_refs; see proc(5)).
func ResetPeakRSS(pid int) error {
	return os.WriteFile(fmt.Sprintf("%s/%d/clear_refs", procfs.DefaultMountPoint, pid), []byte("5"), 0)
}

func proc(root string, pid int) (procfs.Proc, error) {
	fs, err := procfs.NewFS(root)
	if err != nil {
		return procfs.Proc{}, err
	}
	return fs.Proc(pid)
}

func processCPU(root string, pid int) (time.Duration, error) {
	p, err := proc(root, pid)
	if err != nil {
		return 0, err
	}
	st, err := p.Stat()
	if err != nil {
		return 0, fmt.Errorf("proc stat of %d: %w", pid, err)
	}
	return seconds(st.CPUTime()), nil
}

func machineCPU(root string) (time.Duration, error) {
	fs, err := procfs.NewFS(root)
	if err != nil {
		return 0, err
	}
	st, err := fs.Stat()
	if err != nil {
		return 0, fmt.Errorf("/proc/stat: %w", err)
	}
	c := st.CPUTotal
	// Guest time is already counted in user.
	busy := c.User + c.Nice + c.System + c.IRQ + c.SoftIRQ + c.Steal
	if busy+c.Idle+c.Iowait == 0 {
		return 0, errors.New("/proc/stat: no aggregate cpu line")
	}
	return seconds(busy), nil
}

func processMemory(root string, pid int) (Memory, error) {
	p, err := proc(root, pid)
	if err != nil {
		return Memory{}, err
	}
	st, err := p.NewStatus()
	if err != nil {
		return Memory{}, fmt.Errorf("proc status of %d: %w", pid, err)
	}
	if st.VmRSS == 0 || st.VmHWM == 0 {
		return Memory{}, fmt.Errorf("proc status of %d: VmRSS or VmHWM missing", pid)
	}
	return Memory{RSS: int64(st.VmRSS / 1024), Peak: int64(st.VmHWM / 1024)}, nil
}

// seconds converts procfs's float seconds, rounded to the 10 ms clock tick.
func seconds(s float64) time.Duration {
	return (time.Duration(s*1000+0.5) * time.Millisecond).Round(10 * time.Millisecond)
}
