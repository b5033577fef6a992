/* The initramfs init of the Linux-guest tests (vmm/tests/linux_guest.rs) and of
 * `cargo xtask bench linux` (tests/linux/lib.rs builds it and names its markers): prints a
 * marker and the command line, then
 * - with relaunch_init=reboot on the command line: a second marker and reboot(RB_AUTOBOOT),
 *   on every boot (it keeps no state across boots; the VMM ends the run: relaunch's
 *   --max-reboots, or the bench stops QEMU at the second boot's marker);
 * - otherwise: the boot parameters the kernel was started with (the kernel's copy,
 *   /sys/kernel/boot_params/data, as hex on one line), then powers the machine off.
 * Built with `gcc -static -Os`. */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <unistd.h>

static int slurp(const char *path, unsigned char *buf, int cap) {
    int fd = open(path, O_RDONLY);
    int n = 0;
    if (fd < 0)
        return -1;
    for (;;) {
        int r = read(fd, buf + n, cap - n);
        if (r <= 0 || n + r >= cap) {
            n += r > 0 ? r : 0;
            break;
        }
        n += r;
    }
    close(fd);
    return n;
}

int main(void) {
    static unsigned char buf[8192];
    int n;
    mount("proc", "/proc", "proc", 0, 0);
    mount("sysfs", "/sys", "sysfs", 0, 0);
    printf("RELAUNCH-INIT: hello from init\n");
    n = slurp("/proc/cmdline", buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("RELAUNCH-INIT: cmdline %s", buf);
    if (strstr((char *)buf, "relaunch_init=reboot")) {
        printf("RELAUNCH-INIT: rebooting\n");
        fflush(stdout);
        reboot(RB_AUTOBOOT);
        return 1;
    }
    n = slurp("/sys/kernel/boot_params/data", buf, sizeof buf);
    printf("RELAUNCH-INIT: boot_params %d ", n);
    for (int i = 0; i < n; i++)
        printf("%02x", buf[i]);
    printf("\nRELAUNCH-INIT: powering off\n");
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    return 0;
}
