/*
 * A Spread-style C client of libringfence, run by tools/tests/c_api.rs
 * against a real cluster:
 *
 *   sp_total_order SOCKET NAME GROUP MEMBERS COUNT
 *
 * 1. connects to the daemon at SOCKET as NAME; before every receive it
 *    waits with select(2) on the mailbox, as Spread event loops do;
 * 2. checks the error cases: an illegal group and service, an unknown
 *    mailbox, and a message (sent to its own private group) too long for
 *    the buffer and for the groups array, kept until received whole, then
 *    truncated with DROP_RECV;
 * 3. joins GROUP and waits for a regular view of
 *    MEMBERS members, checking the membership message (group, members, own
 *    index, group id, the member that changed);
 * 4. multicasts COUNT messages "NAME:k" (agreed, every fifth safe) and
 *    receives every message of the group until it has COUNT from each of
 *    the MEMBERS - 1 senders other than a watcher, printing each as
 *    "msg PAYLOAD" in delivery order;
 * 5. leaves, disconnects, and prints "done". Any failed check prints "FAIL: ..." on standard error and
 *    exits 1.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>

#include "sp.h"

#define MAX_MEMBERS 16

static void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void expect(int got, int want, const char *what) {
    if (got != want) {
        fail("%s: got %d (%s), want %d (%s)", what, got, rf_error_text(got), want,
             rf_error_text(want));
    }
}

/* Waits until the mailbox has a message, as a Spread event loop does:
 * select(2) on the mailbox descriptor alone (at most 10 s). The library
 * reads no further than the message it returns, so a readable mailbox is
 * exactly a waiting message. */
static void wait_message(mailbox mbox) {
    fd_set fds;
    FD_ZERO(&fds);
    FD_SET(mbox, &fds);
    struct timeval limit = {10, 0};
    int n;
    do {
        n = select(mbox + 1, &fds, NULL, NULL, &limit);
    } while (n < 0 && errno == EINTR);
    if (n != 1) fail("select: no message within 10 s (gave %d)", n);
}

struct received {
    service service_type;
    char sender[MAX_GROUP_NAME];
    int num_groups;
    char groups[MAX_MEMBERS][MAX_GROUP_NAME];
    int16 mess_type;
    int endian_mismatch;
    int len;
    char mess[4096];
};

static void receive(mailbox mbox, struct received *r) {
    wait_message(mbox);
    r->service_type = 0;
    r->len = SP_receive(mbox, &r->service_type, r->sender, MAX_MEMBERS, &r->num_groups, r->groups,
                        &r->mess_type, &r->endian_mismatch, (int)sizeof r->mess - 1, r->mess);
    if (r->len < 0) fail("SP_receive: %s", rf_error_text(r->len));
    r->mess[r->len] = 0;
}

static void check_errors(mailbox mbox, const char *me) {
    char big[100];
    char small[10];
    char groups[1][MAX_GROUP_NAME];
    char sender[MAX_GROUP_NAME];
    service st;
    int num_groups, endian;
    int16 mt;

    expect(SP_join(mbox, ""), ILLEGAL_GROUP, "joining an empty group name");
    expect(SP_multicast(mbox, 0, "g", 0, 1, "x"), ILLEGAL_SERVICE, "multicast without a service");
    expect(SP_multicast(mbox, AGREED_MESS | REG_MEMB_MESS, "g", 0, 1, "x"), ILLEGAL_SERVICE,
           "multicast with a membership flag");
    st = 0;
    expect(SP_receive(mbox + 1000, &st, sender, 1, &num_groups, groups, &mt, &endian,
                      (int)sizeof small, small),
           ILLEGAL_SESSION, "receive on a mailbox never opened");

    /* A 100-byte message to this client's private group. */
    memset(big, 'b', sizeof big);
    expect(SP_multicast(mbox, AGREED_MESS, me, 7, (int)sizeof big, big), (int)sizeof big,
           "multicast to the private group");
    wait_message(mbox);
    if (SP_poll(mbox) <= 0) fail("SP_poll says nothing waits, though select did");
    st = 0;
    expect(SP_receive(mbox, &st, sender, 1, &num_groups, groups, &mt, &endian, (int)sizeof small,
                      small),
           BUFFER_TOO_SHORT, "receive into a 10-byte buffer");
    expect(endian, -100, "endian_mismatch after BUFFER_TOO_SHORT (minus the length)");
    expect(num_groups, 0, "num_groups after BUFFER_TOO_SHORT");
    expect(st, AGREED_MESS, "service of the message kept");
    expect(mt, 7, "mess_type of the message kept");
    st = 0;
    expect(SP_receive(mbox, &st, sender, 0, &num_groups, groups, &mt, &endian, (int)sizeof big,
                      big),
           GROUPS_TOO_SHORT, "receive with no room for groups");
    expect(num_groups, -1, "num_groups after GROUPS_TOO_SHORT (minus the count)");
    memset(big, 0, sizeof big);
    st = 0;
    expect(SP_receive(mbox, &st, sender, 1, &num_groups, groups, &mt, &endian, (int)sizeof big,
                      big),
           100, "receive with room: the kept message, whole");
    if (strcmp(sender, me) != 0 || num_groups != 1 || strcmp(groups[0], me) != 0)
        fail("kept message: sender %s, %d groups, first %s", sender, num_groups, groups[0]);
    if (big[0] != 'b' || big[99] != 'b' || endian != 0) fail("kept message: wrong body");

    /* DROP_RECV: what fits is delivered, the rest dropped. */
    memset(big, 'c', sizeof big);
    expect(SP_multicast(mbox, FIFO_MESS, me, 8, (int)sizeof big, big), (int)sizeof big,
           "second multicast to the private group");
    wait_message(mbox);
    st = DROP_RECV;
    memset(small, 0, sizeof small);
    expect(SP_receive(mbox, &st, sender, 1, &num_groups, groups, &mt, &endian, (int)sizeof small,
                      small),
           BUFFER_TOO_SHORT, "DROP_RECV receive into a 10-byte buffer");
    if (small[0] != 'c' || small[9] != 'c' || mt != 8 || st != FIFO_MESS)
        fail("DROP_RECV: the first 10 bytes were not delivered");
    expect(SP_poll(mbox), 0, "SP_poll after DROP_RECV (the message is consumed)");
    printf("errors ok\n");
}

int main(int argc, char **argv) {
    if (argc != 6) fail("usage: %s SOCKET NAME GROUP MEMBERS COUNT", argv[0]);
    const char *socket = argv[1], *name = argv[2], *group = argv[3];
    int members = atoi(argv[4]), count = atoi(argv[5]);
    if (members < 2 || members > MAX_MEMBERS || count < 1) fail("bad MEMBERS or COUNT");
    setvbuf(stdout, NULL, _IOLBF, 0);

    int major, minor, patch;
    SP_version(&major, &minor, &patch);
    mailbox mbox;
    char me[MAX_GROUP_NAME];
    expect(SP_connect(socket, name, 0, 1, &mbox, me), ACCEPT_SESSION, "SP_connect");
    printf("connected %s (library %d.%d.%d)\n", me, major, minor, patch);

    check_errors(mbox, me);

    expect(SP_join(mbox, group), 0, "SP_join");
    struct received r;
    for (;;) {
        receive(mbox, &r);
        if (!Is_membership_mess(r.service_type)) fail("a data message before the full view");
        if (!Is_reg_memb_mess(r.service_type) || strcmp(r.sender, group) != 0)
            fail("membership message of %s, type %#x", r.sender, r.service_type);
        membership_info info;
        if (SP_get_memb_info(r.mess, r.service_type, &info) != 1) fail("SP_get_memb_info");
        if (r.mess_type < 0 || r.mess_type >= r.num_groups || strcmp(r.groups[r.mess_type], me) != 0)
            fail("mess_type %d is not this member's index", r.mess_type);
        if (Is_caused_join_mess(r.service_type) && info.changed_member[0] == 0)
            fail("a join without the member that joined");
        if (info.my_vs_set.num_members < 1) fail("an empty VS set");
        char set[MAX_MEMBERS][MAX_GROUP_NAME];
        int n = SP_get_vs_set_members(r.mess, &info.my_vs_set, set, MAX_MEMBERS);
        if (n != (int)info.my_vs_set.num_members) fail("SP_get_vs_set_members gave %d", n);
        printf("view %s %d members, joined %s, group id %d.%d.%d.%d.%d\n", r.sender, r.num_groups,
               info.changed_member, info.gid.id[0], info.gid.id[1], info.gid.id[2],
               info.gid.id[3], info.gid.id[4]);
        if (r.num_groups == members) break;
    }

    char text[64];
    for (int k = 0; k < count; k++) {
        int len = snprintf(text, sizeof text, "%s:%d", name, k);
        service s = k % 5 == 0 ? SAFE_MESS : AGREED_MESS;
        expect(SP_multicast(mbox, s, group, (int16)k, len, text), len, "SP_multicast");
    }

    /* Every member but the watcher (a Rust client that only receives)
     * sends COUNT messages. */
    int want = (members - 1) * count, got = 0;
    while (got < want) {
        receive(mbox, &r);
        if (Is_membership_mess(r.service_type)) continue;
        if (!Is_regular_mess(r.service_type) || r.num_groups != 1 || strcmp(r.groups[0], group) != 0)
            fail("unexpected message %#x from %s", r.service_type, r.sender);
        printf("msg %s\n", r.mess);
        got++;
    }

    expect(SP_leave(mbox, group), 0, "SP_leave");
    expect(SP_disconnect(mbox), 0, "SP_disconnect");
    expect(SP_poll(mbox), ILLEGAL_SESSION, "SP_poll after SP_disconnect");
    printf("done\n");
    return 0;
}
