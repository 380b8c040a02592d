/*
 * What dracauth()/dracauth6() do, as a command for the tests:
 *   drac-client HOST 1 IPV4 [udp|tcp]     ADD an IPv4 address (version 1)
 *   drac-client HOST 2 IPV6 [udp|tcp]     ADD an IPv6 address (version 2)
 * clnt_create() asks the portmapper on HOST port 111 where program 900101 is, then the stub
 * calls ADD. Prints the addstat (0 success, 1 perm, 2 syserr, 3 unknown) and exits 0, or prints
 * the RPC error and exits 2 (no client) or 3 (call failed).
 */
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include "drac.h"

int main(int argc, char **argv) {
	if (argc < 4) {
		fprintf(stderr, "usage: %s HOST 1|2 ADDRESS [udp|tcp]\n", argv[0]);
		return 64;
	}
	const char *host = argv[1];
	int vers = argv[2][0] == '2' ? DRACVERS6 : DRACVERS;
	const char *netid = argc > 4 ? argv[4] : "udp";

	CLIENT *clnt = clnt_create(host, DRACPROG, vers, netid);
	if (clnt == NULL) {
		fprintf(stderr, "%s\n", clnt_spcreateerror(host));
		return 2;
	}
	addstat *result;
	if (vers == DRACVERS) {
		struct in_addr a;
		if (inet_pton(AF_INET, argv[3], &a) != 1) {
			fprintf(stderr, "not an IPv4 address: %s\n", argv[3]);
			return 64;
		}
		drac_add_parm p;
		p.ip_addr = ntohl(a.s_addr); /* as dracauth(): to host order; XDR sends big-endian */
		result = dracproc_add_1(&p, clnt);
	} else {
		struct in6_addr a6;
		if (inet_pton(AF_INET6, argv[3], &a6) != 1) {
			fprintf(stderr, "not an IPv6 address: %s\n", argv[3]);
			return 64;
		}
		drac_add_parm6 p6;
		memcpy(p6.ip_addr6, a6.s6_addr, sizeof(p6.ip_addr6));
		result = dracproc_add_2(&p6, clnt);
	}
	if (result == NULL) {
		fprintf(stderr, "%s\n", clnt_sperror(clnt, "call failed"));
		clnt_destroy(clnt);
		return 3;
	}
	printf("%d\n", (int)*result);
	clnt_destroy(clnt);
	return 0;
}
