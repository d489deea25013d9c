/* Sleeps DELAY_MS after exec, then listens on 127.0.0.1 (any port), prints "ready PORT NS"
 * (NS: CLOCK_MONOTONIC just after listen), accepts one connection, and waits for stdin to
 * close. The cold-start test's workload: native, so exec -> listen is the sleep and the
 * program's own start (no interpreter start-up). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long ms = argc > 1 ? atol(argv[1]) : 30;
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 1) ||
        getsockname(s, (struct sockaddr *)&a, &len))
        return 1;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    printf("ready %d %lld\n", ntohs(a.sin_port),
           (long long)now.tv_sec * 1000000000LL + now.tv_nsec);
    fflush(stdout);
    int c = accept(s, NULL, NULL);
    char buf[16];
    while (read(0, buf, sizeof(buf)) > 0)
        ;
    return c < 0;
}
