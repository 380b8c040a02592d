// Binding a listener as a promise: the port it got (0 asks the kernel for one), or the bind
// error (EADDRINUSE, EACCES) instead of an 'error' event nobody waits for. `exclusive` keeps a
// port to this process: a role never shares its listening socket with a cluster worker.
import type dgram from 'node:dgram';
import type net from 'node:net';

/** Listen on host:port over TCP; resolves with the bound port. */
export function listenTcp(server: net.Server, host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, exclusive: true }, () => {
      server.off('error', reject);
      resolve((server.address() as net.AddressInfo).port);
    });
  });
}

/** Bind a UDP socket on host:port. */
export function bindUdp(socket: dgram.Socket, host: string, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    socket.once('error', reject);
    socket.bind({ address: host, port, exclusive: true }, () => {
      socket.off('error', reject);
      resolve();
    });
  });
}
