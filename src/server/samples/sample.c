/*
 * ring_buffer.c - a small ring buffer with a debug dump.
 * Written for the cellscope sample; any resemblance to real code is the point.
 */
#include <stdio.h>
#include <string.h>

#define RB_SIZE 64

struct ring {
	char data[RB_SIZE];
	int head, tail;
};

static int ring_put(struct ring *rb, const char *msg)
{
	int n = strlen(msg);

	if (n == 0 || n > RB_SIZE - 1) {
		fprintf(stderr, "ring_put: bad length %d for \"%s\"\n", n, msg);
		return -1;
	}
	for (int i = 0; i < n; i++) {
		if ((rb->head + 1) % RB_SIZE == rb->tail) {
			/* full: drop the oldest byte */
			rb->tail = (rb->tail + 1) % RB_SIZE;
		}
		rb->data[rb->head] = msg[i];
		rb->head = (rb->head + 1) % RB_SIZE;
	}
	return n;
}

static void ring_dump(const struct ring *rb)
{
	int i = rb->tail;

	printf("ring: [");
	while (i != rb->head) {
		char c = rb->data[i];
		if (c == '"' || c == '\\')
			printf("\\%c", c);	// escape quotes and backslashes
		else if (c < ' ' && (c != '\t' || i == rb->tail))
			printf("\\x%02x", c);
		else
			putchar(c);
		i = (i + 1) % RB_SIZE;
	}
	printf("]\n");
}
