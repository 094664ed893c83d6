package postfixtest

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// Postfix commands (postfix, postconf, postqueue, ...) write their error
// messages to stderr only when stderr is a terminal; otherwise only to
// syslog or maillog_file — and a fatal error in main.cf comes before the
// maillog_file is set up, so it is lost: "postfix start" just exits 1. The
// harness therefore gives them a pseudo-terminal as stderr.

// openPTY returns the master and slave ends of a new pseudo-terminal.
func openPTY() (master, slave *os.File, err error) {
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, err
	}
	rc, err := m.SyscallConn()
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	var n uint32
	var ioctlErr error
	err = rc.Control(func(fd uintptr) {
		var unlock int32
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCSPTLCK, uintptr(unsafe.Pointer(&unlock))); e != 0 {
			ioctlErr = fmt.Errorf("TIOCSPTLCK: %w", e)
			return
		}
		if _, _, e := syscall.Syscall(syscall.SYS_IOCTL, fd, syscall.TIOCGPTN, uintptr(unsafe.Pointer(&n))); e != 0 {
			ioctlErr = fmt.Errorf("TIOCGPTN: %w", e)
		}
	})
	if err == nil {
		err = ioctlErr
	}
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY|syscall.O_CLOEXEC, 0)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, s, nil
}

// runWithTTYStderr runs cmd with stdout captured through a pipe and
// stderr on a pseudo-terminal (or a pipe if no pty can be had). It
// returns both outputs; the error is cmd.Run's.
func runWithTTYStderr(cmd *exec.Cmd) (stdout, stderr string, err error) {
	var outBuf, errBuf bytes.Buffer
	cmd.Stdout = &outBuf
	m, s, perr := openPTY()
	if perr != nil {
		cmd.Stderr = &errBuf
		err = cmd.Run()
		return outBuf.String(), errBuf.String(), err
	}
	defer m.Close()
	cmd.Stderr = s
	if err = cmd.Start(); err != nil {
		s.Close()
		return "", "", err
	}
	s.Close() // the child has its own copy
	result := make(chan string, 1)
	go func() {
		// Reading the master ends with EIO once every holder of the
		// slave has closed it.
		var b bytes.Buffer
		_, _ = io.Copy(&b, m)
		result <- b.String()
	}()
	err = cmd.Wait()
	var errText string
	select {
	case errText = <-result:
	case <-time.After(2 * time.Second):
		// Some process kept the terminal open: stop reading.
		_ = m.SetReadDeadline(time.Now())
		select {
		case errText = <-result:
		case <-time.After(time.Second):
			errText = "(stderr not captured: the terminal was held open)"
		}
	}
	return outBuf.String(), strings.ReplaceAll(errText, "\r\n", "\n"), err
}
