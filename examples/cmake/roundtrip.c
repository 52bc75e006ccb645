/*
 * The program of the CMake example: sends a frame through a channel of its own and receives it,
 * in one process, then deletes the channel.
 *
 *   roundtrip [SOCKET]
 *
 * It uses the coordinator at SOCKET (default: $SHMRING_SOCKET, else the default socket) if one
 * answers, else starts one inside the process.
 */
#include <shmring.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *socket = argc > 1 ? argv[1] : NULL;
    const char *what = "connecting";
    shmring_coordinator *coord = NULL;
    shmring_client *client = NULL;
    shmring_producer *tx = NULL;
    shmring_consumer *rx = NULL;
    shmring_channel_config cfg;
    char name[64], got[64];
    const char sent[] = "hello through shmring";
    size_t len = 0;
    int created = 0;

    shmring_status s = shmring_client_connect(socket, &client);
    if (s == SHMRING_UNAVAILABLE) {
        what = "starting a coordinator";
        if ((s = shmring_coordinator_start(socket, &coord)) != SHMRING_OK) goto out;
        what = "connecting";
        s = shmring_client_connect(shmring_coordinator_socket(coord), &client);
    }
    if (s != SHMRING_OK) goto out;

    snprintf(name, sizeof name, "roundtrip-%ld", (long)getpid());
    shmring_channel_config_default(&cfg, SHMRING_SPSC);
    what = "creating the channel";
    if ((s = shmring_channel_create(client, name, &cfg)) != SHMRING_OK) goto out;
    created = 1;
    what = "opening the producer";
    if ((s = shmring_producer_open(client, name, &tx)) != SHMRING_OK) goto out;
    what = "opening the consumer";
    if ((s = shmring_consumer_open(client, name, &rx)) != SHMRING_OK) goto out;
    what = "sending";
    if ((s = shmring_send(tx, sent, sizeof sent - 1, 1000000000)) != SHMRING_OK) goto out;
    what = "receiving";
    if ((s = shmring_recv(rx, got, sizeof got, &len, 1000000000)) != SHMRING_OK) goto out;
    if (len != sizeof sent - 1 || memcmp(got, sent, len) != 0) {
        fprintf(stderr, "roundtrip: received %zu bytes that are not what was sent\n", len);
        s = SHMRING_INVALID_ARGUMENT;
        what = NULL;
        goto out;
    }
    printf("libshmring %s: received \"%.*s\" on %s\n", shmring_version(), (int)len, got, name);

out:
    if (s != SHMRING_OK && what != NULL)
        fprintf(stderr, "roundtrip: %s: %s: %s\n", what, shmring_status_name(s),
                shmring_last_error());
    shmring_consumer_close(rx);
    shmring_producer_close(tx);
    if (created) shmring_channel_delete(client, name);
    shmring_client_close(client);
    shmring_coordinator_stop(coord);
    return s == SHMRING_OK ? 0 : 1;
}
