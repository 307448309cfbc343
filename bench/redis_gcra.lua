-- bench/redis_gcra.lua — the GCRA of quota_ext.rate_limit_check (and of
-- redis-cell's CL.THROTTLE) as a Redis 7 script, for the rate-limit
-- benchmark (doc/rate-limits.md, "Benchmark").  Same arguments, same five
-- answers:
--
--   EVALSHA <sha> 1 <key> <max_burst> <count> <period> [<quantity>]
--   -> {limited, limit, remaining, retry_after, reset_after}
--
-- Lua 5.1 numbers are doubles, exact for integers below 2^53, so the TAT
-- is stored as "seconds:nanoseconds" and all arithmetic is done relative
-- to now, in nanoseconds (exact while TAT - now stays under 104 days, i.e.
-- for tolerances under 104 days).  The key expires when its TAT passes,
-- as with redis-cell.  The clock is the server's TIME (microseconds).

local function trunc(x)
	if x >= 0 then return math.floor(x) end
	return math.ceil(x)
end

-- whole seconds, plus one when the fraction holds a whole millisecond
local function seconds(ns)
	local s = trunc(ns / 1e9)
	if trunc((ns - s * 1e9) / 1e6) > 0 then s = s + 1 end
	return s
end

local max_burst = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local quantity = tonumber(ARGV[4] or '1')
if not (max_burst and count and period and quantity) then
	return redis.error_reply('ERR max_burst, count, period and quantity must be integers')
end
if max_burst < 0 or count <= 0 or period <= 0 or quantity < 0 then
	return redis.error_reply('ERR invalid rate limit parameters')
end

local interval = math.floor(period * 1e9 / count)
if interval <= 0 then
	return redis.error_reply('ERR rate too high')
end
local tolerance = interval * (max_burst + 1)
local increment = interval * quantity

local t = redis.call('TIME')
local now_s = tonumber(t[1])
local now_ns = tonumber(t[2]) * 1000

-- tat - now, 0 when there is no TAT or it has passed
local tat = 0
local stored = redis.call('GET', KEYS[1])
if stored then
	local s, n = string.match(stored, '^(%d+):(%d+)$')
	if s then
		tat = (tonumber(s) - now_s) * 1e9 + (tonumber(n) - now_ns)
		if tat < 0 then tat = 0 end
	end
end

local new_tat = tat + increment
local allow_at = new_tat - tolerance
local limited, retry, ttl
if allow_at > 0 then
	limited = 1
	retry = -1e9
	if increment <= tolerance then retry = allow_at end
	ttl = tat
else
	limited = 0
	retry = -1e9
	ttl = new_tat
	if quantity > 0 then
		local abs_ns = now_ns + new_tat
		redis.call('SET', KEYS[1],
			string.format('%d:%09d', now_s + math.floor(abs_ns / 1e9), abs_ns % 1e9),
			'PX', math.ceil(new_tat / 1e6))
	end
end

local remaining = 0
local next = tolerance - ttl
if next > -interval then
	local interval_us = math.floor(interval / 1000)
	if interval_us > 0 then
		remaining = trunc(trunc(next / 1000) / interval_us)
	else
		remaining = trunc(next / interval)
	end
end

return {limited, max_burst + 1, remaining, seconds(retry), seconds(ttl)}
