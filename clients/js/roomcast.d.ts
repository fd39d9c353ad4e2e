// Types for the roomcast client (roomcast.js = src/roomcast/web/static/client.js).
// Hand-written: the module is plain JavaScript, served as is to the page.
// Frames follow docs/protocol.md, section 3; the events follow ChatClient's doc comment.

/** The room every connection is in. */
export declare const LOBBY: "lobby";

// -- frames the server sends (docs/protocol.md, "Server to client") ----------------

/** A signed-in user as the server describes one. */
export interface UserInfo {
  name: string;
  guest: boolean;
  admin?: boolean;
}

/** The optional parts of a chat message (live, or as it is now in history). */
export interface MessageExtras {
  reply_to?: string;
  thread?: string;
  quote?: { from: string; message?: string; deleted?: boolean };
  mentions?: string[];
  /** History items only: the state now. */
  edited_at?: string;
  deleted?: boolean;
  reactions?: Record<string, string[]>;
  reply_count?: number;
  /** History items carry their type and time. */
  type?: "chat" | "file" | "direct";
  timestamp?: string;
}

export interface ChatPayload extends MessageExtras {
  room: string;
  message: string;
  from: string;
  seq: number;
  message_id: string;
}

export interface DirectPayload extends MessageExtras {
  from: string;
  to: string;
  message: string;
  message_id: string;
  seq: number;
}

export interface FilePayload extends MessageExtras {
  /** A room file has `room`; a direct file `to`. */
  room?: string;
  to?: string;
  from: string;
  name: string;
  mime: string;
  size: number;
  url: string;
  seq: number;
  message_id: string;
}

/** `edit`: in a room (`room`), or direct (`from`, `to` instead). */
export interface EditPayload {
  room?: string;
  from?: string;
  to?: string;
  message_id: string;
  message: string;
  by: string;
  seq: number;
  edited_at: string;
}

export interface DeletePayload {
  room?: string;
  from?: string;
  to?: string;
  message_id: string;
  by: string;
  seq: number;
}

export interface ReactionPayload {
  room?: string;
  from?: string;
  to?: string;
  message_id: string;
  emoji: string;
  user: string;
  added: boolean;
  seq: number;
}

export interface MentionPayload {
  room: string;
  message_id: string;
  from: string;
  seq: number;
}

export interface SystemPayload {
  message: string;
  session: string;
  user: UserInfo;
  heartbeat: number;
}

export interface AuthPayload {
  ok: true;
  user: UserInfo;
}

export interface AckPayload {
  room?: string;
  seq?: number;
  message_id?: string;
}

export interface JoinedPayload {
  room: string;
  seq: number;
  members: string[];
  member_count: number;
  /** With `since`: false when some missed messages were pruned. */
  recovered?: boolean;
  /** The first seq the replay sends; older missed ones are read with history. */
  replay_from?: number;
  unread?: number;
  mentions?: number;
  last_read?: number;
}

export interface LeftPayload {
  room: string;
  reason?: string;
  /** Set by the client when a rejoin after a reconnect was refused. */
  error?: ErrorPayload;
}

export interface RemovedPayload {
  room: string;
  by: string;
  reason?: string;
  banned?: boolean;
  until?: string | null;
}

export interface RoomPayload {
  room: string;
  private: boolean;
  owner: string | null;
  moderators: string[];
  topic: string;
  title: string;
  slow_mode: number;
  receipts: boolean;
}

/** A presence change, or the member list answering `presence`. */
export type PresencePayload =
  | { room: string; user: string; event: "join" | "leave" }
  | { room: string; members: string[]; member_count: number };

export interface TypingPayload {
  room: string;
  user: string;
}

export interface HistoryPayload {
  room: string;
  thread?: string;
  messages: Array<ChatPayload | FilePayload>;
  has_more: boolean;
  has_newer?: boolean;
  receipts?: Record<string, number>;
  read_counts?: Array<[number, number]>;
}

export interface DirectHistoryPayload {
  messages: Array<(DirectPayload | FilePayload | EditPayload | DeletePayload | ReactionPayload | MentionPayload) & { type?: string; timestamp?: string }>;
  has_more: boolean;
  has_newer?: boolean;
  last_seq: number;
  receipts?: Record<string, number>;
}

/** The user's read marker: `{room}`, `{direct}` or `{direct, with}`. */
export interface ReadPayload {
  room?: string;
  direct?: true;
  with?: string;
  seq: number;
  unread: number;
  mentions: number;
}

export interface ReceiptPayload {
  room?: string;
  direct?: true;
  user: string;
  seq: number;
}

export interface UnreadCounts {
  room?: string;
  with?: string;
  unread: number;
  mentions: number;
  last_read: number;
  last_seq: number;
  last_at: string | null;
}

export interface UnreadPayload {
  rooms: UnreadCounts[];
  direct: UnreadCounts & { conversations: UnreadCounts[] };
}

export interface SearchHitPayload {
  room?: string;
  direct?: true;
  with?: string;
  thread?: string;
  seq: number;
  message_id: string;
  from: string;
  at: string;
  message: string;
  edited_at?: string;
  snippet: string;
  highlights: Array<[number, number]>;
}

export interface SearchPayload {
  results: SearchHitPayload[];
  cursor?: string;
}

export type ErrorCode =
  | "invalid_json" | "invalid_message" | "forbidden" | "not_member" | "not_found"
  | "unknown_user" | "auth_failed" | "rate_limited" | "too_large" | "quota_exceeded"
  | "banned" | "muted" | "internal" | "token_expired";

export interface ErrorPayload {
  code: ErrorCode | (string & {});
  message: string;
  /** rate_limited: ms to wait. */
  retry_after?: number;
  /** banned, muted: until when (null: no end). */
  until?: string | null;
  reason?: string;
  room?: string;
}

/** Each frame type the server sends, and its payload. */
export interface ServerFrames {
  system: SystemPayload;
  auth: AuthPayload;
  pong: unknown;
  ack: AckPayload;
  error: ErrorPayload;
  chat: ChatPayload;
  direct: DirectPayload;
  file: FilePayload;
  edit: EditPayload;
  delete: DeletePayload;
  reaction: ReactionPayload;
  mention: MentionPayload;
  joined: JoinedPayload;
  left: LeftPayload;
  removed: RemovedPayload;
  room: RoomPayload;
  presence: PresencePayload;
  typing: TypingPayload;
  history: HistoryPayload;
  direct_history: DirectHistoryPayload;
  read: ReadPayload;
  receipt: ReceiptPayload;
  unread: UnreadPayload;
  search: SearchPayload;
  /** The debugging `echo` command's answer: the frame as the server read it. */
  echo: Record<string, unknown>;
}

export type ServerFrameType = keyof ServerFrames;

/** A frame from the server: `type` tells which payload it has. */
export type ServerFrame = {
  [T in ServerFrameType]: { type: T; id?: string; payload: ServerFrames[T]; timestamp?: string };
}[ServerFrameType];

/** An answer to a frame (`send()`'s promise): the frame's type and payload. */
export interface Reply<T extends ServerFrameType = ServerFrameType> {
  type: T;
  payload: ServerFrames[T];
}

// -- what the client hands the page --------------------------------------------------

export interface FileInfo {
  name: string;
  mime: string;
  size: number;
  url: string;
}

export interface Quote {
  from: string;
  message: string;
  deleted: boolean;
}

/** A message's state besides its text. */
export interface MessageState {
  deleted: boolean;
  editedAt: string | null;
  reactions: Map<string, string[]>;
  replyTo: string | null;
  thread: string | null;
  quote: Quote | null;
  replyCount: number;
  mentions: string[];
}

/** A room message (chat or file). */
export interface RoomItem extends MessageState {
  kind: "chat" | "file";
  room: string;
  from: string;
  text: string;
  seq: number;
  messageId: string;
  timestamp: string | null;
  file: FileInfo | null;
}

/** A direct message (or direct file). */
export interface DirectItem extends MessageState {
  kind: "direct" | "file";
  from: string;
  to: string;
  text: string;
  seq: number;
  messageId: string;
  timestamp: string | null;
  file: FileInfo | null;
}

/** A change to a message: in a room (`room`) or direct (`direct`, `from`, `to`). */
export interface ChangeItem {
  kind: "edit" | "delete" | "reaction";
  messageId: string;
  by: string;
  seq: number;
  timestamp: string | null;
  room?: string;
  direct?: true;
  from?: string;
  to?: string;
  /** edit */
  text?: string;
  editedAt?: string;
  /** reaction */
  emoji?: string;
  user?: string;
  added?: boolean;
}

export interface MentionItem {
  kind: "mention";
  /** The room the user was named in. */
  mentionIn: string;
  messageId: string;
  from: string;
  seq: number;
  timestamp: string | null;
}

export interface SearchResult {
  room: string | null;
  direct: boolean;
  with: string | null;
  thread: string | null;
  seq: number;
  messageId: string;
  from: string;
  at: string | null;
  message: string;
  editedAt: string | null;
  snippet: string;
  highlights: Array<[number, number]>;
}

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";
export type TransportOption = "auto" | "websocket" | "http";
export type Transport = "websocket" | "http";

export interface StateEvent {
  state: ConnectionState;
  /** When the next attempt starts (ms since the epoch), while waiting. */
  retryAt: number | null;
  reason: string | null;
  queued: number;
  transport: Transport;
}

/** The frames the outbox keeps until answered. */
export type SendKind = "chat" | "direct" | "file" | "edit" | "delete" | "react" | "unreact" | "join"
  | "leave" | "history" | "direct_history" | "presence" | "read" | "unread" | "search" | "auth" | (string & {});

export type Meta = Record<string, unknown> | null;

export interface AckedEvent {
  id: string;
  kind: SendKind;
  meta: Meta;
  payload: AckPayload;
}

export interface FailedEvent {
  id: string;
  kind: SendKind;
  meta: Meta;
  room: string | null;
  code: string;
  message: string;
  details: Record<string, unknown>;
}

export interface RateLimitedEvent {
  id: string;
  kind: SendKind;
  room: string | null;
  retryAfter: number;
}

/** Every event of ChatClient, and what its listeners get. */
export interface ChatClientEvents {
  state: StateEvent;
  user: UserInfo & { admin: boolean };
  joined: JoinedPayload;
  left: LeftPayload;
  message: RoomItem;
  direct: DirectItem;
  change: ChangeItem;
  mention: MentionItem;
  refreshed: { room: string; messages: RoomItem[] };
  presence: PresencePayload;
  typing: TypingPayload;
  read: ReadPayload;
  receipt: ReceiptPayload;
  servererror: ErrorPayload | { code: string; message: string };
  expired: ErrorPayload | { code: "token_expired" };
  outbox: number;
  acked: AckedEvent;
  failed: FailedEvent;
  removed: RemovedPayload;
  room: RoomPayload;
  ratelimited: RateLimitedEvent;
  /** Every frame the server sent, as it came. */
  frame: ServerFrame;
}

// -- classes and functions ------------------------------------------------------------

export interface BackoffOptions {
  /** ms: the first ceiling (default 500). */
  first?: number;
  factor?: number;
  /** ms: the highest ceiling (default 30000). */
  cap?: number;
  /** ms: a connection this long resets the attempts (default 60000). */
  stable?: number;
  random?: () => number;
}

/** Exponential backoff with full jitter (times in milliseconds). */
export declare class Backoff {
  constructor(options?: BackoffOptions);
  first: number;
  factor: number;
  cap: number;
  stable: number;
  random: () => number;
  attempt: number;
  /** The delay before the next attempt; counts the attempt. */
  next(): number;
  /** A connection that lasted `ms` ended: start again from `first` if it was stable. */
  connectedFor(ms: number): void;
}

/** One ordered stream: offer() takes items in any order, returns those deliverable now. */
export declare class SeqStream<T = unknown> {
  constructor(expected?: number | null);
  expected: number | null;
  early: Map<number, T>;
  startAt(expected: number): T[];
  offer(seq: number, item: T): T[];
  ready(): T[];
  skipTo(bound: number): T[];
}

/** An error the server answered a frame with. */
export declare class SendError extends Error {
  constructor(code: string, message: string, details?: Record<string, unknown>);
  code: string;
  serverMessage: string;
  details: Record<string, unknown>;
}

/** What ChatClient needs of a WebSocket class (the browser's, Node 22's, or `ws`'s). */
export interface WebSocketLike {
  readonly readyState: number;
  binaryType: string;
  send(data: string | ArrayBuffer): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: { data: any }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;
export type FetchFunction = (input: string, init?: RequestInit) => Promise<Response>;

export interface EventStreamOptions {
  token?: string | null;
  fetch?: FetchFunction | null;
  /** Opened because the WebSocket handshake failed. */
  fallback?: boolean;
}

/** The HTTP fallback transport (GET /events, POST /events/{stream}), with a WebSocket's face. */
export declare class EventStream implements WebSocketLike {
  constructor(url: string, options?: EventStreamOptions);
  readonly url: string;
  readyState: number;
  binaryType: string;
  fallback: boolean;
  /** The stream's id, once open. */
  stream: string | null;
  /** Seconds within which the server wants a POST (0: none). */
  heartbeat: number;
  send(data: string | ArrayBuffer): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: object) => void) | null;
  onmessage: ((event: { data: string }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: any) => void) | null;
}

export interface ChatClientOptions {
  /** ws:// or wss:// URL of /ws. */
  url: string;
  token?: string | null;
  /** A guest nickname (when there is no token). */
  guest?: string | null;
  backoff?: Backoff | null;
  /** A new token when the server refused or expired this one (null: none). */
  refreshToken?: (() => Promise<string | null>) | null;
  pingInterval?: number;
  pingTimeout?: number;
  openTimeout?: number;
  /** Frames the outbox may hold. */
  maxQueue?: number;
  /** "auto" (default): WebSocket, and /events when its handshake fails. */
  transport?: TransportOption;
  /** Where GET /events is (default: from `url`). */
  eventsUrl?: string | null;
  /** A WebSocket class (default: the global one; Node 20: the `ws` package). */
  WebSocket?: WebSocketConstructor | null;
  fetch?: FetchFunction | null;
}

export interface Sent<T extends ServerFrameType = ServerFrameType> {
  id: string;
  /** The answer, or a SendError. */
  promise: Promise<Reply<T>>;
}

export interface HistoryPage {
  messages: RoomItem[];
  hasMore: boolean;
  hasNewer: boolean;
  receipts: Map<string, number>;
  readCounts: Map<number, number>;
}

export interface DirectHistoryPage {
  messages: DirectItem[];
  hasMore: boolean;
  hasNewer: boolean;
  lastSeq: number;
  receipts: Map<string, number>;
}

export interface SearchOptions {
  room?: string | null;
  direct?: boolean;
  with?: string | null;
  from?: string | null;
  after?: string | null;
  before?: string | null;
  order?: "newest" | "relevance" | null;
  limit?: number | null;
  cursor?: string | null;
}

/** A room (`{room}`) or a user (`{to}`). */
export type Target = { room: string; to?: undefined } | { to: string; room?: undefined };

/** The connection: outbox, acks, exactly-once ordered delivery, reconnects. */
export declare class ChatClient {
  constructor(options: ChatClientOptions);
  url: string;
  token: string | null;
  guest: string | null;
  backoff: Backoff;
  state: ConnectionState;
  /** When the next attempt starts (ms since the epoch), while waiting. */
  retryAt: number | null;
  closedReason: string | null;
  user: (UserInfo & { admin: boolean }) | null;
  /** The transport in use (or last used). */
  transport: Transport;
  readonly transportOption: TransportOption;
  /** Until when (ms since the epoch) reconnects use HTTP after a fallback. */
  httpUntil: number;
  closeCode: number | null;
  closeReason: string | null;
  authRefused: boolean;

  on<K extends keyof ChatClientEvents>(name: K, fn: (detail: ChatClientEvents[K]) => void): () => void;
  /** Messages (chat, direct, file) waiting for the server's ack. */
  readonly queued: number;
  /** The rooms joined (resumed after reconnects). */
  readonly rooms: string[];
  /** The last seq delivered in `room`, or null. */
  lastSeq(room: string): number | null;

  start(): void;
  /** Try now instead of waiting out the backoff. */
  reconnectNow(): void;
  close(reason?: string): void;

  send<T extends ServerFrameType = ServerFrameType>(type: string, payload: object | null, meta?: Meta, data?: string | ArrayBuffer | null): Sent<T>;
  sendChat(room: string, text: string, meta?: Meta, options?: { replyTo?: string | null }): Sent<"ack">;
  edit(messageId: string, text: string, meta?: Meta): Sent<"ack">;
  delete(messageId: string, meta?: Meta): Sent<"ack">;
  react(messageId: string, emoji: string, meta?: Meta): Sent<"ack">;
  unreact(messageId: string, emoji: string, meta?: Meta): Sent<"ack">;
  sendDirect(to: string, text: string, meta?: Meta): Sent<"ack">;
  sendFile(target: Target, name: string, mime: string, bytes: ArrayBuffer | Uint8Array, meta?: Meta): Sent<"ack">;
  join(room: string): Promise<Reply<"joined">>;
  leave(room: string): Promise<Reply<"left">>;
  history(room: string, before?: number | null, limit?: number, options?: { thread?: string | null; around?: number | null }): Promise<HistoryPage>;
  directHistory(options?: { before?: number | null; limit?: number; around?: number | null }): Promise<DirectHistoryPage>;
  markRead(where: { room?: string | null; with?: string | null }, seq: number): Sent<"read">;
  unread(): Promise<UnreadPayload>;
  search(query: string, options?: SearchOptions): Promise<{ results: SearchResult[]; cursor: string | null }>;
  presence(room: string): Promise<string[]>;
  typing(room: string): void;
  setToken(token: string): void;
}

/** The WebSocket class where there is no global one (Node 20: the `ws` package). */
export declare function loadWebSocket(): Promise<WebSocketConstructor>;
export declare function newId(): string;
export declare function fileFrame(header: object, bytes: ArrayBuffer | Uint8Array): ArrayBuffer;
export declare function searchResult(payload: SearchHitPayload): SearchResult;
export declare function roomItem(type: string, payload: Partial<ChatPayload & FilePayload> & { room: string }, timestamp?: string | null): RoomItem;
export declare function directItem(type: string, payload: Partial<DirectPayload & FilePayload>, timestamp?: string | null): DirectItem;
export declare function changeItem(type: "edit" | "delete" | "reaction", payload: Partial<EditPayload & DeletePayload & ReactionPayload>, timestamp?: string | null): ChangeItem;
export declare function mentionItem(payload: MentionPayload, timestamp?: string | null): MentionItem;
