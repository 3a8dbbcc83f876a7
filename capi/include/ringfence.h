/*
 * ringfence.h: the C API of libringfence, the ringfence client library.
 *
 * The calls, types and constants follow Spread's sp.h, so a Spread
 * application moves over by relinking (-lringfence) and a few small
 * changes; docs/c-api.md in the ringfence sources lists them. Values that
 * Spread also has are Spread's; sizes differ (MAX_GROUP_NAME).
 *
 * A mailbox is the connection's socket descriptor: wait on it with
 * select(2) or poll(2); it is readable exactly when SP_receive has a
 * message to return. One thread may block in SP_receive while others send.
 */
#ifndef RINGFENCE_H
#define RINGFENCE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Spread's integer names. */
#ifndef RINGFENCE_NO_SPREAD_INTS
typedef int16_t int16;
typedef int32_t int32;
typedef uint32_t int32u;
#endif

typedef int mailbox;
typedef int service;

/* A group or member name slot, NUL included: private names (#client#daemon)
 * have up to 64 bytes, group names up to 32. (Spread: 32.) */
#define MAX_GROUP_NAME 68
/* Longest name a client may give itself in SP_connect. (Spread: 10.) */
#define MAX_PRIVATE_NAME 32

/* Services: set one in SP_multicast; SP_receive reports it. */
#define UNRELIABLE_MESS 0x00000001
#define RELIABLE_MESS 0x00000002
#define FIFO_MESS 0x00000004
#define CAUSAL_MESS 0x00000008
#define AGREED_MESS 0x00000010
#define SAFE_MESS 0x00000020
#define REGULAR_MESS 0x0000003f
#define SELF_DISCARD 0x00000040

/* Membership messages. */
#define CAUSED_BY_JOIN 0x00000100
#define CAUSED_BY_LEAVE 0x00000200
#define CAUSED_BY_DISCONNECT 0x00000400
#define CAUSED_BY_NETWORK 0x00000800
#define REG_MEMB_MESS 0x00001000
#define TRANSITION_MESS 0x00002000
#define MEMBERSHIP_MESS 0x00003f00
/* ringfence only: same members, new view key (keyed groups). */
#define RF_CAUSED_BY_REKEY 0x00004000
/* A request the daemon refused (mess_type: its error code, body: its text),
 * or a message that could not be opened. */
#define REJECT_MESS 0x00400000
/* SP_receive input: truncate what does not fit instead of failing. */
#define DROP_RECV 0x01000000

#define Is_unreliable_mess(type) ((type) & UNRELIABLE_MESS)
#define Is_reliable_mess(type) ((type) & RELIABLE_MESS)
#define Is_fifo_mess(type) ((type) & FIFO_MESS)
#define Is_causal_mess(type) ((type) & CAUSAL_MESS)
#define Is_agreed_mess(type) ((type) & AGREED_MESS)
#define Is_safe_mess(type) ((type) & SAFE_MESS)
#define Is_regular_mess(type) (((type) & REGULAR_MESS) && !((type) & REJECT_MESS))
#define Is_self_discard(type) ((type) & SELF_DISCARD)
#define Is_membership_mess(type) (((type) & MEMBERSHIP_MESS) && !((type) & REJECT_MESS))
#define Is_reg_memb_mess(type) ((type) & REG_MEMB_MESS)
#define Is_transition_mess(type) ((type) & TRANSITION_MESS)
#define Is_caused_join_mess(type) ((type) & CAUSED_BY_JOIN)
#define Is_caused_leave_mess(type) ((type) & CAUSED_BY_LEAVE)
#define Is_caused_disconnect_mess(type) ((type) & CAUSED_BY_DISCONNECT)
#define Is_caused_network_mess(type) ((type) & CAUSED_BY_NETWORK)
#define Is_self_leave(type) \
    (((type) & CAUSED_BY_LEAVE) && !((type) & (REG_MEMB_MESS | TRANSITION_MESS)))
#define Is_reject_mess(type) ((type) & REJECT_MESS)

/* Return values. */
#define ACCEPT_SESSION 1
#define ILLEGAL_SPREAD -1
#define COULD_NOT_CONNECT -2
#define REJECT_QUOTA -3
#define REJECT_NO_NAME -4
#define REJECT_ILLEGAL_NAME -5
#define REJECT_NOT_UNIQUE -6
#define REJECT_VERSION -7
#define CONNECTION_CLOSED -8
#define REJECT_AUTH -9
#define ILLEGAL_SESSION -11
#define ILLEGAL_SERVICE -12
#define ILLEGAL_MESSAGE -13
#define ILLEGAL_GROUP -14
#define BUFFER_TOO_SHORT -15
#define GROUPS_TOO_SHORT -16
#define MESSAGE_TOO_LONG -17
#define NET_ERROR_ON_SESSION -18

/* A view of a group, unique over time: id[0], id[1] the ring sequence
 * (high, low 32 bits), id[2] the ring's representative, id[3], id[4] the
 * view counter (high, low). (Spread: 3 int32s.) */
typedef struct {
    int32_t id[5];
} group_id;

typedef struct {
    unsigned int num_members;
    unsigned int members_offset; /* of the first name in the membership body */
} vs_set_info;

typedef struct {
    group_id gid;
    char changed_member[MAX_GROUP_NAME]; /* join, leave, disconnect */
    unsigned int num_vs_sets;
    vs_set_info my_vs_set;
} membership_info;

/* spread_name: a Unix socket path (contains '/'), a daemon name (its socket
 * at $TMPDIR/ringfence/NAME/client.sock), or PORT@HOST / HOST:PORT for TCP
 * with the token in $RINGFENCE_TOKEN. private_name: 1 to 32 printable ASCII
 * characters without '#', or NULL/"" to have one made up. priority: ignored.
 * group_membership: 0 for no membership messages. private_group receives
 * "#name#daemon" (MAX_GROUP_NAME bytes). Returns ACCEPT_SESSION or < 0. */
int SP_connect(const char *spread_name, const char *private_name, int priority,
               int group_membership, mailbox *mbox, char *private_group);
int SP_disconnect(mailbox mbox);

int SP_join(mailbox mbox, const char *group);
int SP_leave(mailbox mbox, const char *group);

/* Returns mess_len, or < 0. */
int SP_multicast(mailbox mbox, service service_type, const char *group, int16_t mess_type,
                 int mess_len, const char *mess);
int SP_multigroup_multicast(mailbox mbox, service service_type, int num_groups,
                            const char groups[][MAX_GROUP_NAME], int16_t mess_type,
                            int mess_len, const char *mess);

/* Blocks until a message arrives. Returns the body's length, or < 0:
 * BUFFER_TOO_SHORT (*endian_mismatch = -length) and GROUPS_TOO_SHORT
 * (*num_groups = -count) keep the message for the next call unless
 * *service_type had DROP_RECV on input. */
int SP_receive(mailbox mbox, service *service_type, char sender[MAX_GROUP_NAME], int max_groups,
               int *num_groups, char groups[][MAX_GROUP_NAME], int16_t *mess_type,
               int *endian_mismatch, int max_mess_len, char *mess);

/* > 0: a message waits (its size); 0: SP_receive would block; < 0: error. */
int SP_poll(mailbox mbox);

int SP_equal_group_ids(group_id g1, group_id g2);

int SP_get_memb_info(const char *memb_mess, const service service_type,
                     membership_info *memb_info);
int SP_get_vs_sets_info(const char *memb_mess, vs_set_info *vs_sets, int num_vs_sets,
                        unsigned int *my_vs_set_index);
int SP_get_vs_set_members(const char *memb_mess, const vs_set_info *vs_set,
                          char member_names[][MAX_GROUP_NAME], int member_names_count);

/* Prints what an error code means to standard output. */
void SP_error(int error);
/* ringfence only: what an error code means (a static string). */
const char *rf_error_text(int error);
/* Fills in this library's version (ringfence's); returns 1. */
int SP_version(int *major_version, int *minor_version, int *patch_version);

#ifdef __cplusplus
}
#endif

#endif /* RINGFENCE_H */
