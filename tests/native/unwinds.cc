// A host whose probed function sometimes throws: the exception unwinds through its frame to
// main, which catches it. wasmtop's kernel test puts its call probes on `probed` and checks
// the process is unharmed: a return probe (uretprobe) replaces the frame's return address, and
// an unwinder that meets it gives up (a Rust panic aborts: "failed to initiate panic"; C++
// calls std::terminate). Prints its pid, waits for a line, makes the calls, prints the result.
#include <cstdio>
#include <stdexcept>
#include <unistd.h>

extern "C" __attribute__((noinline)) long probed(long n)
{
    if (n == 7)
        throw std::runtime_error("boom");
    asm volatile("" ::: "memory");
    return n + 1;
}

int main()
{
    std::printf("%d\n", getpid());
    std::fflush(stdout);
    char line[16];
    if (!std::fgets(line, sizeof line, stdin))
        return 2;
    long sum = 0;
    for (long i = 0; i < 5; i++)
        sum += probed(i);
    bool caught = false;
    try {
        probed(7);
    } catch (const std::runtime_error &) {
        caught = true;
    }
    sum += probed(5); // a call after the one that never returned
    std::printf("caught %d sum %ld\n", caught, sum);
    return caught ? 0 : 1;
}
