// The Colyseus side of bench/peers: one room, N players, patches at 20 Hz.
//
//   node server.js [--port 0]
//
// Prints "serving ws://127.0.0.1:PORT/ room ROOM_ID" on stdout once the room exists,
// then runs until it gets SIGTERM/SIGINT. The room's state is a MapSchema of players
// (x, y and the seq of the newest position); each "pos" message {seq, x, y} from a
// client overwrites its own player; Colyseus sends the changes every patchRate (50 ms).
import { Server, Room, matchMaker } from "@colyseus/core";
import { WebSocketTransport } from "@colyseus/ws-transport";
import { schema, t, MapSchema } from "@colyseus/schema";

const Player = schema({ x: t.float32(), y: t.float32(), seq: t.uint32() }, "Player");
const State = schema({ players: t.map(Player) }, "State");

class BenchRoom extends Room {
  state = new State();
  patchRate = 50; // ms: 20 patches per second
  autoDispose = false; // one room for the whole ladder

  messages = {
    pos(client, m) {
      const p = this.state.players.get(client.sessionId);
      if (p === undefined) return;
      p.x = m.x;
      p.y = m.y;
      p.seq = m.seq;
    },
  };

  onJoin(client) {
    this.state.players.set(client.sessionId, new Player());
  }

  onLeave(client) {
    this.state.players.delete(client.sessionId);
  }
}

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
};

const transport = new WebSocketTransport();
const server = new Server({ transport, greet: false });
server.define("bench", BenchRoom);
await server.listen(Number(arg("--port", "0")), "127.0.0.1");
const room = await matchMaker.createRoom("bench", {});
const { port } = transport.server.address();
console.log(`serving ws://127.0.0.1:${port}/ room ${room.roomId}`);
